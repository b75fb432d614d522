//! `ember batch`: one JSON request per input line, one JSON result per output line.
//!
//! Input line: `{"id": …, "prompt": "…"}` or `{"id": …, "messages": [{"role", "content"}…]}`,
//! with optional `max_tokens`, `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`,
//! `presence_penalty`, `frequency_penalty`, `seed`, `stop` (string or list), `raw`.
//! Output line: `{"id", "text", "finish_reason", "prompt_tokens", "completion_tokens"}`, or
//! `{"id", "error"}`. The output file is rewritten atomically after every answer, so it is always
//! complete; ids already answered there are skipped on a re-run (failed ones are retried).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use ember_engine::chat::Message;
use ember_engine::sampling::Strategy;
use ember_engine::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::Value;

use crate::args::{log, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every request; a request's own fields override them.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(short, long)]
    pub input: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    id: Value,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    raw: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

pub fn run(a: BatchArgs) -> Result<()> {
    let input = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let mut results = read_previous(&a.output)?;
    let done: HashSet<String> = results.iter().filter(|r| r.get("error").is_none()).filter_map(|r| r.get("id").map(id_key)).collect();
    results.retain(|r| r.get("error").is_none());

    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Request>(line).map_err(|e| e.to_string()).and_then(check_request) {
            Err(e) => eprintln!("{}:{}: skipped: {e}", a.input.display(), i + 1),
            Ok(r) if !seen.insert(id_key(&r.id)) => eprintln!("{}:{}: skipped: duplicate id {}", a.input.display(), i + 1, r.id),
            Ok(r) if done.contains(&id_key(&r.id)) => {}
            Ok(r) => todo.push(r),
        }
    }
    log::info(&format!("{} requests to run, {} already answered in {}", todo.len(), done.len(), a.output.display()));
    if todo.is_empty() {
        return write_results(&a.output, &results);
    }
    let engine = a.model.open()?;
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut session = engine.session();
    let mut tokens = 0usize;
    let t0 = std::time::Instant::now();
    for r in todo {
        let result = match answer(&engine, &mut session, &a.sampling, &r) {
            Ok(v) => {
                tokens += v["completion_tokens"].as_u64().unwrap_or(0) as usize;
                v
            }
            Err(e) => {
                bar.suspend(|| eprintln!("request {}: {e:#}", r.id));
                serde_json::json!({"id": r.id, "error": format!("{e:#}")})
            }
        };
        results.push(result);
        write_results(&a.output, &results)?;
        bar.inc(1);
        bar.set_message(format!("{:.1} tok/s", tokens as f64 / t0.elapsed().as_secs_f64()));
    }
    bar.finish();
    Ok(())
}

fn check_request(r: Request) -> std::result::Result<Request, String> {
    match (&r.prompt, &r.messages) {
        (Some(_), Some(_)) => Err("give either `prompt` or `messages`, not both".into()),
        (None, None) => Err("missing `prompt` or `messages`".into()),
        _ => Ok(r),
    }
}

fn answer(engine: &Engine, session: &mut ember_engine::generate::Session<'_>, defaults: &SamplingArgs, r: &Request) -> Result<Value> {
    let mut s = defaults.clone();
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = r.$f { s.$f = v; })* };
    }
    set!(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty);
    if r.seed.is_some() {
        s.seed = r.seed;
    }
    match &r.stop {
        Some(StopField::One(x)) => s.stop = vec![x.clone()],
        Some(StopField::Many(v)) => s.stop = v.clone(),
        None => {}
    }
    let mut params = s.params();
    if let Strategy::Sample { temperature, .. } = params.sampling.strategy {
        if temperature == 0.0 {
            params.sampling.strategy = Strategy::Greedy;
        }
    }
    let text = match (&r.prompt, &r.messages) {
        (Some(p), _) if r.raw.unwrap_or(false) || engine.chat_template.is_none() => p.clone(),
        (Some(p), _) => engine.render_chat(&[Message { role: "user".into(), content: p.clone() }])?,
        (None, Some(m)) => engine.render_chat(m)?,
        (None, None) => unreachable!("checked when read"),
    };
    let ids = engine.encode_prompt(&text)?;
    let mut gen = session.generate(&ids, &params)?;
    let mut out = String::new();
    for piece in gen.by_ref() {
        out.push_str(&piece?.text);
    }
    let (prompt_tokens, completion_tokens) = gen.usage();
    let finish = gen.finish_reason().map(|f| f.openai()).unwrap_or("stop");
    Ok(serde_json::json!({
        "id": r.id, "text": out, "finish_reason": finish,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
    }))
}

fn id_key(v: &Value) -> String {
    v.to_string()
}

/// Results already in the output file; an unreadable trailing line is dropped (it is rewritten).
fn read_previous(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.get("id").is_some() => out.push(v),
            _ => eprintln!("{}:{}: not a result line, dropped", path.display(), i + 1),
        }
    }
    Ok(out)
}

fn write_results(path: &Path, results: &[Value]) -> Result<()> {
    ember_engine::util::write_atomic(path, |f| {
        for r in results {
            serde_json::to_writer(&mut *f, r)?;
            f.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}
