//! The Hugging Face folder loader on tiny folders written here: names, shapes, dtypes and bytes
//! round-trip (single file and sharded), and every kind of bad input gives an error naming the file.

use std::path::Path;

use ember_engine::hf::{canonical_name, open_folder};
use ember_engine::weights::WeightStore;
use ember_engine::{Arch, EngineError, ModelConfig};
use ember_kernels::DType;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

/// A tiny llama: 2 layers, dim 8, ffn 16, 2 heads (1 KV head, head_dim 4), vocab 10.
fn config_json() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_hidden_layers": 2,
        "vocab_size": 10,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 128,
        "rope_theta": 10000.0,
        "hidden_act": "silu"
    })
}

/// One tensor to write: HF name, safetensors dtype, shape, raw little-endian bytes.
struct Tensor {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_tensor(name: &'static str, shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes = (0..n).flat_map(|i| (seed + i as f32 * 0.5).to_le_bytes()).collect();
    Tensor { name, dtype: Dtype::F32, shape: shape.to_vec(), bytes }
}

fn f16_tensor(name: &'static str, shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes = (0..n).flat_map(|i| half::f16::from_f32(seed - i as f32 * 0.25).to_le_bytes()).collect();
    Tensor { name, dtype: Dtype::F16, shape: shape.to_vec(), bytes }
}

fn bf16_tensor(name: &'static str, shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes = (0..n).flat_map(|i| half::bf16::from_f32(seed + i as f32).to_le_bytes()).collect();
    Tensor { name, dtype: Dtype::BF16, shape: shape.to_vec(), bytes }
}

fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name, TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("consistent test tensor")))
        .collect();
    safetensors::serialize_to_file(views, &None, path).expect("write safetensors");
}

fn write_config(dir: &Path, config: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config.json");
}

/// Every tensor of the tiny model, with HF names, in mixed dtypes, plus a rotary buffer.
fn model_tensors() -> Vec<Tensor> {
    vec![
        f32_tensor("model.embed_tokens.weight", &[10, 8], 0.0),
        f32_tensor("model.norm.weight", &[8], 1.0),
        f16_tensor("lm_head.weight", &[10, 8], 2.0),
        f32_tensor("model.layers.0.input_layernorm.weight", &[8], 3.0),
        f16_tensor("model.layers.0.self_attn.q_proj.weight", &[8, 8], 4.0),
        bf16_tensor("model.layers.0.self_attn.q_proj.bias", &[8], 5.0),
        f16_tensor("model.layers.0.self_attn.k_proj.weight", &[4, 8], 6.0),
        f16_tensor("model.layers.0.self_attn.v_proj.weight", &[4, 8], 7.0),
        f16_tensor("model.layers.0.self_attn.o_proj.weight", &[8, 8], 8.0),
        f32_tensor("model.layers.0.post_attention_layernorm.weight", &[8], 9.0),
        bf16_tensor("model.layers.0.mlp.gate_proj.weight", &[16, 8], 10.0),
        bf16_tensor("model.layers.0.mlp.up_proj.weight", &[16, 8], 11.0),
        bf16_tensor("model.layers.1.mlp.down_proj.weight", &[8, 16], 12.0),
        f32_tensor("model.layers.1.self_attn.rotary_emb.inv_freq", &[2], 13.0),
    ]
}

/// (HF name, canonical name) for every tensor of `model_tensors`.
const NAMES: [(&str, &str); 14] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
    ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
    ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
    ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"),
    ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"),
    ("model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"),
    ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
    ("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"),
    ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"),
    ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
    ("model.layers.1.self_attn.rotary_emb.inv_freq", "model.layers.1.self_attn.rotary_emb.inv_freq"),
];

fn canonical(hf: &str) -> &'static str {
    NAMES.iter().find(|(h, _)| *h == hf).map(|(_, c)| *c).expect("name in table")
}

fn open(dir: &Path) -> (ModelConfig, WeightStore) {
    match open_folder(dir) {
        Ok(v) => v,
        Err(e) => panic!("open_folder failed: {e}"),
    }
}

fn open_err(dir: &Path) -> EngineError {
    match open_folder(dir) {
        Ok(_) => panic!("open_folder accepted a bad folder"),
        Err(e) => e,
    }
}

fn check_store(store: &WeightStore, tensors: &[Tensor]) {
    assert_eq!(store.tensors.len(), tensors.len());
    for t in tensors {
        let w = store.get(canonical(t.name)).expect("tensor present under its canonical name");
        assert_eq!(w.name, canonical(t.name));
        assert_eq!(w.shape, t.shape, "{}", t.name);
        let dtype = match t.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            _ => DType::BF16,
        };
        assert_eq!(w.dtype, dtype, "{}", t.name);
        assert_eq!(w.bytes(), &t.bytes[..], "{}: bytes must round-trip", t.name);
        assert_eq!(w.n_elements(), t.shape.iter().product::<usize>());
    }
}

#[test]
fn canonical_names_follow_llama_cpp() {
    for (hf, gguf) in NAMES {
        assert_eq!(canonical_name(hf), gguf);
    }
    assert_eq!(canonical_name("model.layers.17.self_attn.v_proj.bias"), "blk.17.attn_v.bias");
    assert_eq!(canonical_name("model.layers.x.mlp.up_proj.weight"), "model.layers.x.mlp.up_proj.weight");
    assert_eq!(canonical_name("model.layers.3.mlp.up_proj.scales"), "model.layers.3.mlp.up_proj.scales");
}

#[test]
fn single_file_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let tensors = model_tensors();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);

    let (config, store) = open(dir.path());
    assert_eq!(config.arch, Arch::Llama);
    assert_eq!((config.n_layers, config.dim, config.ffn_dim), (2, 8, 16));
    assert_eq!((config.n_heads, config.n_kv_heads, config.head_dim, config.vocab_size), (2, 1, 4, 10));
    assert_eq!(store.path, dir.path());
    check_store(&store, &tensors);
    assert!(store.get_shaped("blk.0.attn_k.weight", &[4, 8]).is_ok());
}

#[test]
fn sharded_folder_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let tensors = model_tensors();
    let (first, second) = tensors.split_at(6);
    let shard = |i| format!("model-0000{i}-of-00002.safetensors");
    write_safetensors(&dir.path().join(shard(1)), first);
    write_safetensors(&dir.path().join(shard(2)), second);
    let weight_map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|t| (t.name.to_string(), json!(shard(1))))
        .chain(second.iter().map(|t| (t.name.to_string(), json!(shard(2)))))
        .collect();
    let index = json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("write index");

    let (_, store) = open(dir.path());
    check_store(&store, &tensors);
}

#[test]
fn missing_config_is_an_io_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_safetensors(&dir.path().join("model.safetensors"), &model_tensors());
    match open_err(dir.path()) {
        EngineError::Io { path, .. } => assert_eq!(path, dir.path().join("config.json")),
        other => panic!("expected Io, got {other}"),
    }
}

#[test]
fn invalid_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), "{\n  \"hidden_size\": 8,\n  oops\n}").expect("write");
    let err = open_err(dir.path());
    let msg = err.to_string();
    match err {
        EngineError::Config { path, field, problem } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert_eq!(field, "<json>");
            assert!(problem.contains("line 3"), "serde's position should be kept: {problem}");
        }
        other => panic!("expected Config, got {other}"),
    }
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_field_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_json();
    config.as_object_mut().expect("object").remove("hidden_size");
    write_config(dir.path(), &config);
    write_safetensors(&dir.path().join("model.safetensors"), &model_tensors());
    match open_err(dir.path()) {
        EngineError::Config { path, field, .. } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert_eq!(field, "hidden_size");
        }
        other => panic!("expected Config, got {other}"),
    }
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_json();
    config["architectures"] = json!(["GPTNeoXForCausalLM"]);
    write_config(dir.path(), &config);
    write_safetensors(&dir.path().join("model.safetensors"), &model_tensors());
    match open_err(dir.path()) {
        EngineError::UnknownArchitecture { path, arch } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert_eq!(arch, "GPTNeoXForCausalLM");
        }
        other => panic!("expected UnknownArchitecture, got {other}"),
    }
}

#[test]
fn truncated_safetensors_is_a_format_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let file = dir.path().join("model.safetensors");
    write_safetensors(&file, &model_tensors());
    let bytes = std::fs::read(&file).expect("read");
    // Cut inside the data, inside the header, and inside the length prefix.
    for keep in [bytes.len() - 3, 40, 5, 0] {
        std::fs::write(&file, &bytes[..keep]).expect("truncate");
        match open_err(dir.path()) {
            EngineError::Format { path, what } => {
                assert_eq!(path, file, "kept {keep} bytes");
                assert!(what.contains("truncated"), "kept {keep} bytes: {what}");
            }
            other => panic!("kept {keep} bytes: expected Format, got {other}"),
        }
    }
}

#[test]
fn index_pointing_at_a_missing_shard_names_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let tensors = model_tensors();
    write_safetensors(&dir.path().join("a.safetensors"), &tensors[..1]);
    let index = json!({ "weight_map": {
        "model.embed_tokens.weight": "a.safetensors",
        "model.norm.weight": "b.safetensors",
    }});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("write index");
    match open_err(dir.path()) {
        EngineError::Io { path, source } => {
            assert_eq!(path, dir.path().join("b.safetensors"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other}"),
    }
}

#[test]
fn index_promising_an_absent_tensor_names_shard_and_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    write_safetensors(&dir.path().join("a.safetensors"), &model_tensors()[..1]);
    let index = json!({ "weight_map": {
        "model.embed_tokens.weight": "a.safetensors",
        "model.norm.weight": "a.safetensors",
    }});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("write index");
    match open_err(dir.path()) {
        EngineError::MissingTensor { path, name } => {
            assert_eq!(path, dir.path().join("a.safetensors"));
            assert_eq!(name, "model.norm.weight");
        }
        other => panic!("expected MissingTensor, got {other}"),
    }
}

#[test]
fn index_may_not_leave_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let index = json!({ "weight_map": { "model.norm.weight": "../elsewhere.safetensors" } });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("write index");
    match open_err(dir.path()) {
        EngineError::Config { path, field, .. } => {
            assert_eq!(path, dir.path().join("model.safetensors.index.json"));
            assert_eq!(field, "weight_map");
        }
        other => panic!("expected Config, got {other}"),
    }
}

#[test]
fn unsupported_dtype_names_tensor_and_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    let mut tensors = model_tensors();
    tensors.push(Tensor {
        name: "model.position_ids",
        dtype: Dtype::I64,
        shape: vec![4],
        bytes: (0..4i64).flat_map(|i| i.to_le_bytes()).collect(),
    });
    let file = dir.path().join("model.safetensors");
    write_safetensors(&file, &tensors);
    match open_err(dir.path()) {
        EngineError::UnknownTensorFormat { path, tensor, format } => {
            assert_eq!(path, file);
            assert_eq!(tensor, "model.position_ids");
            assert_eq!(format, "I64");
        }
        other => panic!("expected UnknownTensorFormat, got {other}"),
    }
}

#[test]
fn folder_without_weights_says_what_it_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &config_json());
    match open_err(dir.path()) {
        EngineError::Format { path, what } => {
            assert_eq!(path, dir.path());
            assert!(what.contains("model.safetensors"), "{what}");
        }
        other => panic!("expected Format, got {other}"),
    }
}
