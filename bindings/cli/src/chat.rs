//! `ember chat`: interactive multi-turn chat. The whole conversation is re-rendered with the
//! chat template each turn; the session reuses the cached prefix, so only new tokens are run.

use std::io::{BufRead, Write};

use anyhow::Result;
use clap::Args;
use ember_engine::chat::Message;

use crate::args::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let engine = a.model.open()?;
    if engine.chat_template.is_none() {
        eprintln!("ember: this model has no chat template; turns are joined as plain text");
    }
    let params = a.sampling.params();
    let mut session = engine.session();
    let start: Vec<Message> = a.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).collect();
    let mut messages = start.clone();
    eprintln!("ember: chat ready — /reset forgets the conversation, /exit or Ctrl-D quits");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = start.clone();
                session.reset();
                eprintln!("ember: conversation reset");
                continue;
            }
            _ => {}
        }
        messages.push(Message { role: "user".into(), content: line });
        let ids = engine.encode_prompt(&engine.render_chat(&messages)?)?;
        let mut answer = String::new();
        let result = (|| -> Result<()> {
            for piece in session.generate(&ids, &params)? {
                let piece = piece?;
                out.write_all(piece.text.as_bytes())?;
                out.flush()?;
                answer.push_str(&piece.text);
            }
            Ok(())
        })();
        writeln!(out)?;
        match result {
            Ok(()) => messages.push(Message { role: "assistant".into(), content: answer.trim().to_string() }),
            Err(e) => {
                eprintln!("error: {e:#}");
                messages.pop();
            }
        }
    }
    Ok(())
}
