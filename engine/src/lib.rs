//! Ember's engine: open a model file, tokenize, run the forward pass on the CPU, sample, and
//! stream generated text. Embedding daemons, the `ember` command line, the server and the Python
//! module all use this crate; it depends on no CLI, async runtime or Python crate.
//!
//! Data flows one way: [`loader`] (GGUF or Hugging Face folder → config, weights, tokenizer) →
//! [`model`] (forward pass over a [`kv_cache`]) → [`sampling`] → [`generate`] (a streaming
//! iterator of text pieces); [`eval`] scores text (perplexity).
//!
//! # Embedding
//! An [`Engine`] is a loaded model; it is `Send + Sync`, so a daemon opens it once and shares it
//! (`Arc<Engine>`) between conversations. Each conversation is a [`Session`](generate::Session)
//! (its own KV cache; a follow-up prompt reuses the cached prefix). Two ways to generate:
//! - on the calling thread, [`Session::generate`](generate::Session::generate) returns an
//!   iterator of [`Piece`]s; dropping it stops the generation;
//! - on a worker thread, [`Stream::spawn`] returns [`Event`]s over a channel;
//!   [`Stream::cancel`] or dropping the stream stops it and frees its cache before returning.
//!
//! Dropping the last `Arc<Engine>` unmaps the weights. Every error is an [`EngineError`] that
//! names the file, the field or parameter, and the problem.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ember_engine::{chat::Message, Engine, EngineOptions, Event, GenerationParams, Stream};
//!
//! # fn main() -> ember_engine::Result<()> {
//! let path = ember_engine::hub::resolve_model(None)?; // the default model, fetched once
//! let engine = Arc::new(Engine::open(&path, &EngineOptions::default())?);
//! let text = engine.render_chat(&[Message::new("user", "Hello!")])?;
//! let prompt = engine.encode_prompt(&text)?;
//!
//! // On this thread:
//! let mut session = engine.session();
//! for piece in session.generate(&prompt, &GenerationParams::greedy(32))? {
//!     print!("{}", piece?.text);
//! }
//!
//! // On a worker thread, cancelled after five pieces:
//! let mut stream = Stream::spawn(engine.clone(), prompt, GenerationParams::default());
//! for event in stream.by_ref().take(5) {
//!     if let Event::Piece(p) = event {
//!         print!("{}", p.text);
//!     }
//! }
//! stream.cancel();
//! # Ok(())
//! # }
//! ```
//!
//! A runnable version: `cargo run --release -p ember-engine --example embed`.

pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod placement;
pub mod profiler;
pub mod sampling;
pub mod sparsity;
pub mod stream;
pub mod synth;
pub mod tokenizer;
pub mod util;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig};
pub use engine::{Engine, EngineOptions};
pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerationParams, Piece};
pub use stream::{Done, Event, Stream};
