//! Shared by the engine's tests: where the real models and the reference figures
//! (`/work/shared/reference`, Hugging Face transformers on the GGUF's own vocabulary) are, and
//! how far apart two logit rows are.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The reference figures: `$EMBER_REFERENCE_DIR`, else `/work/shared/reference`, else
/// `shared/reference` in the repository. Missing → the test fails, saying where it looked.
pub fn reference_dir() -> PathBuf {
    shared_dir("EMBER_REFERENCE_DIR", "reference")
}

/// The corpora: `$EMBER_DATA_DIR`, else `/work/shared/data`, else `shared/data` in the repository.
pub fn data_dir() -> PathBuf {
    shared_dir("EMBER_DATA_DIR", "data")
}

fn shared_dir(var: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return PathBuf::from(dir);
    }
    let candidates =
        [Path::new("/work/shared").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(name)];
    match candidates.iter().find(|d| d.is_dir()) {
        Some(dir) => dir.clone(),
        None => panic!("{name} folder not found (looked in {candidates:?}); set {var}"),
    }
}

/// `$EMBER_HOME/models`, else `~/.cache/ember/models`.
fn models_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("EMBER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join("models");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/ember/models")
}

/// The default test model (SmolLM2-135M-Instruct Q4_1): `$EMBER_TEST_MODEL`, else the ember
/// cache. CI has it, so its absence fails the test with a message saying where it was looked for.
pub fn smollm_path() -> PathBuf {
    let path = std::env::var_os("EMBER_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        path.is_file(),
        "test model not found at {} (set EMBER_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF)",
        path.display()
    );
    path
}

/// The Qwen2.5-Coder-0.5B GGUF when present (it is not in CI): `None` with a note otherwise.
pub fn qwen_path(test: &str) -> Option<PathBuf> {
    let path = models_dir().join("qwen2.5-coder-0.5b-instruct.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("{test}: skipped, {} is absent", path.display());
        None
    }
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// `reference/<model>/<file>` as JSON (`model` is `smollm2-135m` or `qwen2.5-coder-0.5b`).
pub fn reference(model: &str, file: &str) -> Value {
    read_json(&reference_dir().join(model).join(file))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

pub fn text(v: &Value) -> &str {
    v.as_str().expect("a string")
}

/// The largest |a_i − b_i| of two rows of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
