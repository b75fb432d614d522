//! Hugging Face model folders: `config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`. (Owner: HF loader work in progress — API below is the contract.)

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::WeightStore;

/// Reads `dir/config.json` and memory-maps the safetensors; tensor names are translated to the
/// canonical GGUF names (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`).
pub fn open_folder(_dir: &Path) -> Result<(ModelConfig, WeightStore)> {
    unimplemented!()
}
