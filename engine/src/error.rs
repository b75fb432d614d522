//! The one error type of the engine crate. Every variant names what a user needs to fix the
//! problem: the file, the field or tensor, and what is wrong with it.

use std::path::PathBuf;
use thiserror::Error;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a valid model file: `what` says which field is bad and why.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: unknown architecture `{arch}` (supported: llama, qwen2)")]
    UnknownArchitecture { path: PathBuf, arch: String },
    #[error("{path}: tensor `{tensor}` has format {format}, which Ember does not support")]
    UnknownTensorFormat { path: PathBuf, tensor: String, format: String },
    #[error("{path}: missing metadata key `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{path}: field `{field}`: {problem}")]
    Config { path: PathBuf, field: String, problem: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt has {prompt} tokens but the context holds {ctx}; shorten the prompt, raise --ctx, or ask for truncation")]
    ContextOverflow { prompt: usize, ctx: usize },
    #[error("invalid parameter `{name}`: {problem}")]
    Param { name: &'static str, problem: String },
    #[error("model download: {0}")]
    Download(String),
    #[error(transparent)]
    Kernel(#[from] ember_kernels::KernelError),
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        EngineError::Format { path: path.into(), what: what.into() }
    }
}
