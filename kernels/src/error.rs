//! The one error type of the kernels crate.

use thiserror::Error;

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("{op}: shape mismatch: expected {expected}, got {got}")]
    Shape { op: &'static str, expected: String, got: String },
    #[error("row of {cols} elements is not a whole number of {dtype} blocks of {block}")]
    PartialBlock { dtype: &'static str, cols: usize, block: usize },
    #[error("size overflow computing {what}")]
    Overflow { what: &'static str },
    #[error("{op} is not supported for format {dtype}")]
    Unsupported { op: &'static str, dtype: &'static str },
    #[error("the {0} backend is not compiled into this build (cargo feature `{0}`)")]
    NotCompiled(&'static str),
    #[error("{backend}: {op}: {problem}")]
    Device { backend: String, op: &'static str, problem: String },
}
