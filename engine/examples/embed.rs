//! Embedding Ember in another program: load a model, stream one answer token by token, then
//! start a second answer on a worker thread and cancel it midway.
//!
//! ```text
//! cargo run --release -p ember-engine --example embed [MODEL.gguf] ["prompt"]
//! ```
//! Without a model argument the default model is used (downloaded into the cache on first use).

use std::io::Write;
use std::sync::Arc;

use ember_engine::chat::Message;
use ember_engine::{Engine, EngineOptions, Event, GenerationParams, Stream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next();
    let question = args.next().unwrap_or_else(|| "Name three uses of a GPU.".to_string());

    // 1. Open: resolve a path or a known model name, then memory-map the weights.
    let path = ember_engine::hub::resolve_model(model.as_deref())?;
    let engine = Arc::new(Engine::open(&path, &EngineOptions { ctx: Some(2048), threads: None, ..Default::default() })?);
    eprintln!("loaded {} ({} layers, context {})", path.display(), engine.config().n_layers, engine.ctx());

    // 2. Stream an answer on this thread: a Session keeps the KV cache of one conversation, and
    //    `generate` is an iterator of text pieces. Dropping the iterator stops the generation.
    let prompt = engine.encode_prompt(&engine.render_chat(&[Message::new("user", question.as_str())])?)?;
    let params = GenerationParams { max_tokens: 64, ..GenerationParams::default() };
    let mut session = engine.session();
    let mut answer = session.generate(&prompt, &params)?;
    for piece in answer.by_ref() {
        print!("{}", piece?.text);
        std::io::stdout().flush()?;
    }
    let (prompt_tokens, generated) = answer.usage();
    println!("\n[{:?}: {prompt_tokens} prompt tokens, {generated} generated]", answer.finish_reason());

    // 3. The same on a worker thread, as a daemon would run it: events arrive over a channel,
    //    and `cancel` (or dropping the stream) stops the generation at the next token and frees
    //    its KV cache.
    let mut stream = Stream::spawn(engine.clone(), prompt, GenerationParams::greedy(1000));
    let mut pieces = 0;
    for event in stream.by_ref() {
        match event {
            Event::Piece(p) => {
                print!("{}", p.text);
                pieces += 1;
                if pieces == 8 {
                    break;
                }
            }
            Event::Done(d) => println!("\n[done: {:?}]", d.finish),
            Event::Error(e) => return Err(e.into()),
        }
    }
    stream.cancel();
    drop(stream); // joins the worker: its session and cache are gone
    println!("\n[cancelled after {pieces} pieces]");
    Ok(())
}
