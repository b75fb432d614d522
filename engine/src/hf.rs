//! Hugging Face model folders: `config.json`, `model.safetensors` or sharded
//! `model.safetensors.index.json`.
//!
//! Follows candle's `VarBuilder::from_mmaped_safetensors` (one memory map per shard, tensors are
//! views into it) and llama.cpp's `convert_hf_to_gguf.py` tensor-name map (HF names → the GGUF
//! names the model code uses). Q/K rows are *not* permuted: HF folders use `RopeStyle::Halves`.
//!
//! safetensors layout: `u64` header length `n`, `n` bytes of JSON header, then the data; each
//! tensor's `data_offsets` are relative to the data start `8 + n`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ember_kernels::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::{Weight, WeightStore};

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Reads `dir/config.json` and memory-maps the safetensors; tensor names are translated to the
/// canonical GGUF names (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`).
pub fn open_folder(dir: &Path) -> Result<(ModelConfig, WeightStore)> {
    let config = read_config(&dir.join(CONFIG))?;
    let shards = shard_files(dir)?;
    let mut tensors = HashMap::new();
    for file in &shards.files {
        load_shard(file, &mut tensors)?;
    }
    // An index that promises a tensor its shard lacks is a broken download: say which.
    for (hf_name, file) in &shards.promised {
        if !tensors.contains_key(&canonical_name(hf_name)) {
            return Err(EngineError::MissingTensor { path: file.clone(), name: hf_name.clone() });
        }
    }
    Ok((config, WeightStore { path: dir.to_path_buf(), tensors }))
}

/// Parses `config.json`; a JSON syntax error is reported as field `<json>` with serde's
/// message (which carries the line and column).
fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Config {
        path: path.to_path_buf(),
        field: "<json>".to_string(),
        problem: e.to_string(),
    })?;
    ModelConfig::from_hf_json(path, &json)
}

/// The safetensors files of a folder, and the tensors its index promises in each.
struct Shards {
    files: Vec<PathBuf>,               // each mapped once, in name order
    promised: Vec<(String, PathBuf)>,  // (HF tensor name, shard file) from the index's weight_map
}

/// `model.safetensors`, or the distinct shards named by the index's `weight_map`.
fn shard_files(dir: &Path) -> Result<Shards> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(Shards { files: vec![single], promised: Vec::new() });
    }
    let index = dir.join(INDEX);
    if !index.is_file() {
        return Err(EngineError::format(dir, format!("no weights: expected `{SINGLE}` or `{INDEX}`")));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Config {
        path: index.clone(),
        field: "<json>".to_string(),
        problem: e.to_string(),
    })?;
    let bad = |problem: String| EngineError::Config { path: index.clone(), field: "weight_map".to_string(), problem };
    let map = match json.get("weight_map") {
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(bad("expected an object of tensor name → file name".to_string())),
        None => return Err(bad("missing".to_string())),
    };
    let mut files = BTreeSet::new();
    let mut promised = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`{tensor}`: expected a file name")))?;
        let plain = Path::new(file).components().all(|c| matches!(c, Component::Normal(_)));
        if file.is_empty() || !plain {
            return Err(bad(format!("`{tensor}`: `{file}` is not a file name inside the folder")));
        }
        files.insert(file);
        promised.push((tensor.clone(), dir.join(file)));
    }
    if files.is_empty() {
        return Err(bad("names no tensors".to_string()));
    }
    Ok(Shards { files: files.into_iter().map(|f| dir.join(f)).collect(), promised })
}

/// Maps one safetensors file and adds its tensors, under canonical names, to `out`.
fn load_shard(path: &Path, out: &mut HashMap<String, Weight>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    if len < 8 {
        return Err(EngineError::format(path, format!("truncated: {len} bytes is too short for a safetensors header")));
    }
    // SAFETY: the map is read-only; a model file changed under a running engine is outside
    // what any memory-mapping inference engine can defend against.
    let mmap = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?);
    // Checks the header, that offsets are contiguous, and that sizes match shapes and file length.
    let (header_len, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| EngineError::format(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let data_start = 8 + header_len;
    let mut infos: Vec<_> = meta.tensors().into_iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    for (hf_name, info) in infos {
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(EngineError::UnknownTensorFormat {
                    path: path.to_path_buf(),
                    tensor: hf_name,
                    format: format!("{other:?}"),
                })
            }
        };
        let (start, end) = info.data_offsets;
        let range = data_start + start..data_start + end;
        let name = canonical_name(&hf_name);
        if out.contains_key(&name) {
            return Err(EngineError::format(path, format!("tensor `{hf_name}` (as `{name}`) appears twice in the folder")));
        }
        let weight = Weight::new(name.clone(), dtype, info.shape.clone(), Arc::clone(&mmap), range);
        out.insert(name, weight);
    }
    Ok(())
}

/// The GGUF name of a Hugging Face llama/qwen2 tensor name; unknown names are kept as they are.
pub fn canonical_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".to_string(),
        "model.norm.weight" => return "output_norm.weight".to_string(),
        "lm_head.weight" => return "output.weight".to_string(),
        _ => {}
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else { return hf.to_string() };
    let Some((layer, tail)) = rest.split_once('.') else { return hf.to_string() };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return hf.to_string();
    }
    let (module, kind) = match tail.rsplit_once('.') {
        Some((m, k @ ("weight" | "bias"))) => (m, k),
        _ => return hf.to_string(),
    };
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return hf.to_string(),
    };
    format!("blk.{layer}.{gguf}.{kind}")
}
