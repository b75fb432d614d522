//! `ember run`: one prompt, answer streamed to stdout.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use ember_engine::chat::Message;

use crate::args::{log, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message (chat template only).
    #[arg(long)]
    pub system: Option<String>,
    /// The prompt; read from stdin when absent.
    pub prompt: Option<String>,
}

pub fn run(a: RunArgs) -> Result<()> {
    let prompt = match a.prompt {
        Some(p) => p,
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let engine = a.model.open()?;
    let text = if a.raw || engine.chat_template.is_none() {
        prompt
    } else {
        let mut messages = Vec::new();
        if let Some(s) = a.system {
            messages.push(Message { role: "system".into(), content: s });
        }
        messages.push(Message { role: "user".into(), content: prompt });
        engine.render_chat(&messages)?
    };
    let ids = engine.encode_prompt(&text)?;
    let params = a.sampling.params();
    let mut session = engine.session();
    let t0 = std::time::Instant::now();
    let mut gen = session.generate(&ids, &params)?;
    let mut out = std::io::stdout().lock();
    for piece in gen.by_ref() {
        out.write_all(piece?.text.as_bytes())?;
        out.flush()?;
    }
    writeln!(out)?;
    let (p, n) = gen.usage();
    log::info(&format!(
        "{p} prompt tokens, {n} generated in {:.2?} ({:?})",
        t0.elapsed(),
        gen.finish_reason().map(|r| r.openai()).unwrap_or("error")
    ));
    Ok(())
}
