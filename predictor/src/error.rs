//! The one error type of the predictor crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    /// A profile file that cannot be read, or is not a profile Ember understands.
    #[error("{}: {field}: {problem}", path.display())]
    File { path: PathBuf, field: String, problem: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad argument: which one and what is wrong with it.
    #[error("{name}: {problem}")]
    Param { name: &'static str, problem: String },
}

pub type Result<T> = std::result::Result<T, PredictorError>;
