//! The decoder-only transformer shared by the `llama` and `qwen2` architectures (Llama 2/3,
//! Mistral, SmolLM2, TinyLlama, ReLU-activated llamas, Qwen 2/2.5), following Hugging Face
//! transformers' `modeling_llama.py` / `modeling_qwen2.py` and llama.cpp's `llm_build_llama`.
//!
//! A block is: norm → attention → add → norm → FFN → add. Qwen2 differs only by the biases on
//! Q, K and V; ReLU models only by the FFN activation.

mod attention;
mod rope;

use ember_kernels::cpu::{matmul, ops};
use rayon::prelude::*;

use crate::config::{Activation, ModelConfig};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::weights::{Weight, WeightStore};
use attention::{attention, AttnShape};
use rope::Rope;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// `(vocab)` for the last position only: generation.
    Last,
    /// `(n_tokens, vocab)`: scoring (perplexity).
    All,
}

struct Layer {
    attn_norm: Vec<f32>,    // (dim)
    wq: Weight,             // (n_heads*head_dim, dim)
    wk: Weight,             // (n_kv_heads*head_dim, dim)
    wv: Weight,             // (n_kv_heads*head_dim, dim)
    bq: Option<Vec<f32>>,   // (n_heads*head_dim)
    bk: Option<Vec<f32>>,   // (n_kv_heads*head_dim)
    bv: Option<Vec<f32>>,   // (n_kv_heads*head_dim)
    wo: Weight,             // (dim, n_heads*head_dim)
    ffn_norm: Vec<f32>,     // (dim)
    w_gate: Weight,         // (ffn_dim, dim)
    w_up: Weight,           // (ffn_dim, dim)
    w_down: Weight,         // (dim, ffn_dim)
}

pub struct Model {
    pub config: ModelConfig,
    embed: Weight,          // (vocab, dim)
    layers: Vec<Layer>,
    output_norm: Vec<f32>,  // (dim)
    output: Weight,         // (vocab, dim); the embedding itself when tied
    rope: Rope,
}

impl Model {
    /// Binds the weights to the model's structure, checking every shape.
    pub fn load(config: &ModelConfig, w: &WeightStore) -> Result<Model> {
        let c = config;
        let (dim, q_dim, kv_dim) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let vec = |name: &str, n: usize| -> Result<Vec<f32>> { w.get_shaped(name, &[n])?.to_f32() };
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
            let m = w.get_shaped(name, &[rows, cols])?.clone();
            ember_kernels::MatRef::new(m.dtype, rows, cols, m.bytes())?;
            Ok(m)
        };
        let bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
            if c.qkv_bias || w.tensors.contains_key(name) { vec(name, n).map(Some) } else { Ok(None) }
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: vec(&n("attn_norm.weight"), dim)?,
                wq: mat(&n("attn_q.weight"), q_dim, dim)?,
                wk: mat(&n("attn_k.weight"), kv_dim, dim)?,
                wv: mat(&n("attn_v.weight"), kv_dim, dim)?,
                bq: bias(&n("attn_q.bias"), q_dim)?,
                bk: bias(&n("attn_k.bias"), kv_dim)?,
                bv: bias(&n("attn_v.bias"), kv_dim)?,
                wo: mat(&n("attn_output.weight"), dim, q_dim)?,
                ffn_norm: vec(&n("ffn_norm.weight"), dim)?,
                w_gate: mat(&n("ffn_gate.weight"), c.ffn_dim, dim)?,
                w_up: mat(&n("ffn_up.weight"), c.ffn_dim, dim)?,
                w_down: mat(&n("ffn_down.weight"), dim, c.ffn_dim)?,
            });
        }
        let embed = mat("token_embd.weight", c.vocab_size, dim)?;
        let output = match w.tensors.contains_key("output.weight") {
            true => mat("output.weight", c.vocab_size, dim)?,
            false => embed.clone(),
        };
        let freq_factors = match w.tensors.get("rope_freqs.weight") {
            Some(f) => Some(f.to_f32()?),
            None => None,
        };
        Ok(Model {
            config: config.clone(),
            embed,
            layers,
            output_norm: vec("output_norm.weight", dim)?,
            output,
            rope: Rope::new(c, freq_factors.as_deref()),
        })
    }

    /// A KV cache for this model holding up to `ctx` positions.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        KvCache::new(self.config.n_layers, self.config.n_kv_heads * self.config.head_dim, ctx)
    }

    /// Runs `tokens` at the positions after those already in `cache`, appending their keys and
    /// values, and returns the logits asked for.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, want: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::Param { name: "tokens", problem: "forward needs at least one token".into() });
        }
        cache.check_room(tokens.len())?;
        let eps = self.config.rms_eps;
        let mut x = self.embed(tokens)?; // (n, dim)
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm_rows(&x, &layer.attn_norm, eps);
            let a = self.attention(l, layer, &h, tokens.len(), cache)?;
            ops::add_assign(&mut x, &a);
            let h = rms_norm_rows(&x, &layer.ffn_norm, eps);
            let f = self.ffn(layer, &h, tokens.len())?;
            ops::add_assign(&mut x, &f);
        }
        cache.advance(tokens.len());
        self.logits(&x, tokens.len(), want)
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (dim, vocab) = (self.config.dim, self.config.vocab_size);
        let table = self.embed.mat();
        let mut x = vec![0.0f32; tokens.len() * dim];
        for (t, row) in tokens.iter().zip(x.chunks_mut(dim)) {
            if *t as usize >= vocab {
                return Err(EngineError::Param { name: "tokens", problem: format!("token id {t} is outside the vocabulary of {vocab}") });
            }
            ember_kernels::quant::dequantize_row(table.dtype, table.row(*t as usize), row)?;
        }
        Ok(x)
    }

    fn attention(&self, l: usize, layer: &Layer, h: &[f32], n: usize, cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.config;
        let hd = c.head_dim;
        let mut q = linear(&layer.wq, h, n, layer.bq.as_deref())?; // (n, n_heads*hd)
        let mut k = linear(&layer.wk, h, n, layer.bk.as_deref())?; // (n, n_kv_heads*hd)
        let v = linear(&layer.wv, h, n, layer.bv.as_deref())?; // (n, n_kv_heads*hd)
        let start = cache.len();
        let (cos, sin) = self.rope.tables(start, n);
        let half = self.rope.half_dim();
        for (heads, per_pos) in [(&mut q, c.n_heads), (&mut k, c.n_kv_heads)] {
            heads.par_chunks_mut(hd).enumerate().for_each(|(i, head)| {
                let p = i / per_pos;
                ops::rope(head, &cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half], self.rope.interleaved);
            });
        }
        cache.append(l, &k, &v);
        let (kc, vc) = cache.layer(l);
        let shape = AttnShape { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: hd, start };
        let o = attention(&shape, &q, kc, vc);
        linear(&layer.wo, &o, n, None)
    }

    fn ffn(&self, layer: &Layer, h: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut gate = linear(&layer.w_gate, h, n, None)?; // (n, ffn_dim)
        let up = linear(&layer.w_up, h, n, None)?; // (n, ffn_dim)
        let act = self.config.activation;
        gate.par_iter_mut().zip(up.par_iter()).for_each(|(g, u)| {
            *g = match act {
                Activation::Silu => ops::silu(*g),
                Activation::Relu => g.max(0.0),
                Activation::Gelu => ops::gelu(*g),
            } * u
        });
        linear(&layer.w_down, &gate, n, None)
    }

    fn logits(&self, x: &[f32], n: usize, want: Logits) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        let rows = match want {
            Logits::Last => &x[(n - 1) * dim..],
            Logits::All => x,
        };
        let h = rms_norm_rows(rows, &self.output_norm, self.config.rms_eps);
        linear(&self.output, &h, h.len() / dim, None)
    }

    /// Bytes of weights the forward pass reads per token (each matrix once; a tied embedding
    /// counted once, as the output matrix).
    pub fn weight_bytes(&self) -> usize {
        let mats = self.layers.iter().flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        mats.map(|w| w.n_bytes()).sum::<usize>() + self.output.n_bytes()
    }
}

/// `x · Wᵀ + b` for `n` rows of `x`.
fn linear(w: &Weight, x: &[f32], n: usize, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    let m = w.mat();
    let mut out = vec![0.0f32; n * m.rows];
    matmul(m, x, n, &mut out)?;
    if let Some(b) = bias {
        for row in out.chunks_mut(m.rows) {
            ops::add_assign(row, b);
        }
    }
    Ok(out)
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut h = x.to_vec();
    for row in h.chunks_mut(weight.len()) {
        ops::rms_norm(row, weight, eps);
    }
    h
}
