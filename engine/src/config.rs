//! The model's hyper-parameters, read from the file's metadata (GGUF keys `{arch}.*`) or from a
//! Hugging Face `config.json` — never from cargo features.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, MetaValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM2, TinyLlama, ReluLLaMA/ProSparse.
    Llama,
    /// Qwen 2 / 2.5: llama with biases on Q, K and V.
    Qwen2,
}

impl Arch {
    pub fn parse(path: &Path, name: &str) -> Result<Arch> {
        match name {
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Ok(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            other => Err(EngineError::UnknownArchitecture { path: path.to_path_buf(), arch: other.to_string() }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// The FFN activation: `act(gate·x) ⊙ (up·x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    Gelu,
}

impl Activation {
    fn parse(path: &Path, field: &str, name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" | "swiglu" => Ok(Activation::Silu),
            "relu" => Ok(Activation::Relu),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "geglu" => Ok(Activation::Gelu),
            other => Err(EngineError::Config {
                path: path.to_path_buf(),
                field: field.to_string(),
                problem: format!("unknown activation `{other}` (supported: silu, relu, gelu)"),
            }),
        }
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama-arch GGUF files, whose Q/K rows llama.cpp's converter permuted.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face `rotate_half`, and qwen2 GGUF files.
    Halves,
}

/// RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1: per-frequency factors from (factor, low/high freq factors, original context).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_ctx: usize },
    /// Per-dimension divisors stored in the file (GGUF `rope_freqs.weight`), loaded with the weights.
    FreqFactors,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub name: String,
    pub n_layers: usize,
    pub dim: usize,        // hidden size
    pub ffn_dim: usize,    // FFN intermediate size
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub train_ctx: usize,  // context length the model was trained with
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rope_scaling: RopeScaling,
    pub rms_eps: f32,
    pub activation: Activation,
    pub qkv_bias: bool,
}

impl ModelConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let path = &g.path;
        let arch_name = g.architecture()?;
        let arch = Arch::parse(path, arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let uint = |k: &str| -> Result<usize> { Ok(g.get_u64(&key(k))? as usize) };
        let opt_uint = |k: &str| g.opt(&key(k), MetaValue::as_u64, "a non-negative integer");

        let dim = uint("embedding_length")?;
        let n_heads = uint("attention.head_count")?;
        let n_kv_heads = opt_uint("attention.head_count_kv")?.map(|v| v as usize).unwrap_or(n_heads);
        let head_dim = match opt_uint("attention.key_length")? {
            Some(v) => v as usize,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        let vocab_size = match opt_uint("vocab_size")? {
            Some(v) => v as usize,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match g.opt(&key("rope.scaling.type"), |v| v.as_str().map(str::to_string), "a string")? {
            Some(t) if t == "linear" => {
                let factor = g.opt(&key("rope.scaling.factor"), MetaValue::as_f64, "a number")?.unwrap_or(1.0);
                RopeScaling::Linear { factor: factor as f32 }
            }
            Some(t) if t != "none" => {
                return Err(EngineError::Config {
                    path: path.clone(),
                    field: key("rope.scaling.type"),
                    problem: format!("unsupported RoPE scaling `{t}` (supported: none, linear)"),
                })
            }
            _ if g.tensor("rope_freqs.weight").is_some() => RopeScaling::FreqFactors,
            _ => RopeScaling::None,
        };
        let activation = match g.opt(&key("activation_function"), |v| v.as_str().map(str::to_string), "a string")? {
            Some(a) => Activation::parse(path, &key("activation_function"), &a)?,
            None => Activation::Silu,
        };
        let cfg = ModelConfig {
            arch,
            name: g.opt("general.name", |v| v.as_str().map(str::to_string), "a string")?.unwrap_or_default(),
            n_layers: uint("block_count")?,
            dim,
            ffn_dim: uint("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            train_ctx: uint("context_length")?,
            rope_theta: g.opt(&key("rope.freq_base"), MetaValue::as_f64, "a number")?.unwrap_or(10_000.0) as f32,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::Halves,
            },
            rope_scaling,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            activation,
            qkv_bias: arch == Arch::Qwen2,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// From a Hugging Face `config.json` (already parsed).
    pub fn from_hf_json(path: &Path, j: &serde_json::Value) -> Result<ModelConfig> {
        let field_err = |field: &str, problem: &str| EngineError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem: problem.to_string(),
        };
        let uint = |k: &str| -> Result<usize> {
            match j.get(k) {
                None => Err(field_err(k, "missing")),
                Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| field_err(k, "expected a non-negative integer")),
            }
        };
        let opt_uint = |k: &str| -> Result<Option<usize>> {
            match j.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| field_err(k, "expected a non-negative integer")),
            }
        };
        let opt_f = |k: &str| -> Result<Option<f64>> {
            match j.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| field_err(k, "expected a number")),
            }
        };
        let arch_name = match (j.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()), j.get("model_type")) {
            (Some(a), _) => a.to_string(),
            (None, Some(m)) => m.as_str().ok_or_else(|| field_err("model_type", "expected a string"))?.to_string(),
            (None, None) => return Err(field_err("architectures", "missing (and no model_type)")),
        };
        let arch = Arch::parse(path, &arch_name)?;
        let dim = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let n_kv_heads = opt_uint("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = opt_uint("head_dim")?.unwrap_or(if n_heads > 0 { dim / n_heads } else { 0 });
        let activation = match j.get("hidden_act") {
            None => Activation::Silu,
            Some(v) => Activation::parse(path, "hidden_act", v.as_str().ok_or_else(|| field_err("hidden_act", "expected a string"))?)?,
        };
        let rope_scaling = match j.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(s) => {
                let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("");
                let num = |k: &str, default: f64| s.get(k).and_then(|v| v.as_f64()).unwrap_or(default) as f32;
                match ty {
                    "linear" => RopeScaling::Linear { factor: num("factor", 1.0) },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor", 8.0),
                        low_freq_factor: num("low_freq_factor", 1.0),
                        high_freq_factor: num("high_freq_factor", 4.0),
                        original_ctx: num("original_max_position_embeddings", 8192.0) as usize,
                    },
                    "default" => RopeScaling::None,
                    other => return Err(field_err("rope_scaling.rope_type", &format!("unsupported RoPE scaling `{other}`"))),
                }
            }
        };
        let cfg = ModelConfig {
            arch,
            name: j.get("_name_or_path").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            n_layers: uint("num_hidden_layers")?,
            dim,
            ffn_dim: uint("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: uint("vocab_size")?,
            train_ctx: opt_uint("max_position_embeddings")?.unwrap_or(4096),
            rope_theta: opt_f("rope_theta")?.unwrap_or(10_000.0) as f32,
            rope_style: RopeStyle::Halves,
            rope_scaling,
            rms_eps: opt_f("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            activation,
            qkv_bias: arch == Arch::Qwen2 || j.get("attention_bias").and_then(|v| v.as_bool()).unwrap_or(false),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Rejects sizes no real model has, before anything is allocated from them.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, problem: String| {
            Err(EngineError::Config { path: path.to_path_buf(), field: field.to_string(), problem })
        };
        const MAX: usize = 1 << 20;
        for (field, v) in [
            ("block_count", self.n_layers),
            ("embedding_length", self.dim),
            ("feed_forward_length", self.ffn_dim),
            ("head_count", self.n_heads),
            ("head_count_kv", self.n_kv_heads),
            ("key_length", self.head_dim),
        ] {
            if v == 0 || v > MAX {
                return bad(field, format!("{v} is out of range 1..={MAX}"));
            }
        }
        if self.vocab_size == 0 || self.vocab_size > 1 << 24 {
            return bad("vocab_size", format!("{} is out of range", self.vocab_size));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad("head_count_kv", format!("{} does not divide head_count {}", self.n_kv_heads, self.n_heads));
        }
        if self.head_dim % 2 != 0 {
            return bad("key_length", format!("head dimension {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return bad("rms_norm_eps", format!("{} must be in (0, 1)", self.rms_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta", format!("{} must be positive", self.rope_theta));
        }
        Ok(())
    }
}
