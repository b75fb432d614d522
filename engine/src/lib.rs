//! Ember's engine: open a model file, tokenize, run the forward pass on the CPU, sample, and
//! stream generated text. Embedding daemons, the `ember` command line and the Python module all
//! use this crate; it depends on no CLI, async runtime or Python crate.
//!
//! Data flows one way: [`loader`] (GGUF or Hugging Face folder → config, weights, tokenizer) →
//! [`model`] (forward pass over a [`kv_cache`]) → [`sampling`] → [`generate`] (a streaming
//! iterator of text pieces); [`eval`] scores text (perplexity).

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
pub mod sampling;
pub mod stream;
pub mod tokenizer;
pub mod util;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig};
pub use engine::{Engine, EngineOptions};
pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerationParams, Piece};
pub use stream::{Done, Event, Stream};
