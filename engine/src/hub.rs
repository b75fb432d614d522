//! Model cache and download. (Owner: hub work in progress — API below is the contract.)

use std::path::PathBuf;

use crate::error::Result;

/// The cache folder: `$EMBER_HOME`, else `~/.cache/ember`.
pub fn ember_home() -> PathBuf {
    unimplemented!()
}

/// Resolves `--model`: `None` is the default model; a known short name (e.g. `smollm2-135m`,
/// `qwen2.5-coder-0.5b`) is fetched into the cache on first use; anything else is a path.
pub fn resolve_model(_name: Option<&str>) -> Result<PathBuf> {
    unimplemented!()
}
