//! The decoder-only transformer shared by the `llama` and `qwen2` architectures (Llama 2/3,
//! Mistral, SmolLM2, TinyLlama, ReLU-activated llamas, Qwen 2/2.5), following Hugging Face
//! transformers' `modeling_llama.py` / `modeling_qwen2.py` and llama.cpp's `llm_build_llama`.
//!
//! A block is: norm → attention → add → norm → FFN → add. Qwen2 differs only by the biases on
//! Q, K and V; ReLU models only by the FFN activation.

mod ffn;
mod gpu;
mod rope;

pub use ffn::FfnObserver;
pub(crate) use gpu::{attach as attach_gpu, GpuKv, GpuModel, GpuRequest};

use ember_kernels::cpu::{matmul_group, needs_q8, ops, Input, Product};
use ember_kernels::quant::q8::{quantize_q8_rows, Q8Acts};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::sparsity::{SparseFfn, SparsityStats};
use crate::weights::{Weight, WeightStore};
use ember_kernels::cpu::{attention, AttnShape};
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
    /// The FFN sparsity setting, when one is in use.
    pub(crate) sparse: Option<SparseFfn>,
    /// The parts placed on a GPU, when one is in use (the hybrid executor).
    pub(crate) gpu: Option<GpuModel>,
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
        let mut layers = Vec::new(); // not sized from the header: tensors are checked one by one
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
            sparse: None,
            gpu: None,
        })
    }

    /// A KV cache for this model holding up to `ctx` positions.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        KvCache::new(self.config.n_layers, self.config.n_kv_heads * self.config.head_dim, ctx)
    }

    /// Runs `tokens` at the positions after those already in `cache`, appending their keys and
    /// values, and returns the logits asked for (borrowed from the cache's scratch space, so a
    /// decode step allocates nothing once the buffers have grown).
    pub fn forward<'c>(&self, tokens: &[u32], cache: &'c mut KvCache, want: Logits) -> Result<&'c [f32]> {
        self.forward_observed(tokens, cache, want, None)
    }

    /// [`Model::forward`], showing each layer's FFN activations to `obs` (which also makes the
    /// FFN dense for a single token, so the observer sees every neuron).
    pub fn forward_observed<'c>(
        &self,
        tokens: &[u32],
        cache: &'c mut KvCache,
        want: Logits,
        obs: Option<&mut dyn FfnObserver>,
    ) -> Result<&'c [f32]> {
        if tokens.is_empty() {
            return Err(EngineError::Param { name: "tokens", problem: "forward needs at least one token".into() });
        }
        cache.check_room(tokens.len())?;
        if let (Some(g), None) = (&self.gpu, &obs) {
            return self.forward_gpu(g, tokens, cache, want);
        }
        let n = tokens.len();
        let mut s = std::mem::take(&mut cache.scratch);
        s.resize(&self.config, n);
        let result = self.forward_layers(tokens, cache, &mut s, obs).and_then(|()| self.logits(&mut s, n, want));
        cache.scratch = s;
        result?;
        cache.advance(n);
        Ok(&cache.scratch.logits)
    }

    fn forward_layers(&self, tokens: &[u32], cache: &mut KvCache, s: &mut Scratch, mut obs: Option<&mut dyn FfnObserver>) -> Result<()> {
        let eps = self.config.rms_eps;
        self.embed(tokens, &mut s.x)?; // (n, dim)
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&s.x, &layer.attn_norm, eps, &mut s.h);
            self.attention(l, layer, tokens.len(), cache, s)?; // s.h -> s.attn_out
            ops::add_assign(&mut s.x, &s.attn_out);
            rms_norm_rows(&s.x, &layer.ffn_norm, eps, &mut s.h);
            let t0 = std::time::Instant::now();
            self.ffn(l, layer, tokens.len(), s, &mut obs)?; // s.h -> s.ffn_out
            s.stats.ffn_ns += t0.elapsed().as_nanos() as u64;
            ops::add_assign(&mut s.x, &s.ffn_out);
        }
        Ok(())
    }

    fn embed(&self, tokens: &[u32], x: &mut [f32]) -> Result<()> {
        let (dim, vocab) = (self.config.dim, self.config.vocab_size);
        let table = self.embed.mat();
        for (t, row) in tokens.iter().zip(x.chunks_mut(dim)) {
            if *t as usize >= vocab {
                return Err(EngineError::Param { name: "tokens", problem: format!("token id {t} is outside the vocabulary of {vocab}") });
            }
            ember_kernels::quant::dequantize_row(table.dtype, table.row(*t as usize), row)?;
        }
        Ok(())
    }

    fn attention(&self, l: usize, layer: &Layer, n: usize, cache: &mut KvCache, s: &mut Scratch) -> Result<()> {
        let c = &self.config;
        let hd = c.head_dim;
        let mut group = [
            Product { w: layer.wq.mat(), out: &mut s.q }, // (n, n_heads*hd)
            Product { w: layer.wk.mat(), out: &mut s.k }, // (n, n_kv_heads*hd)
            Product { w: layer.wv.mat(), out: &mut s.v }, // (n, n_kv_heads*hd)
        ];
        run_group(&mut group, &s.h, n, &mut s.h_q8)?;
        for (buf, b) in [(&mut s.q, &layer.bq), (&mut s.k, &layer.bk), (&mut s.v, &layer.bv)] {
            if let Some(b) = b {
                buf.chunks_mut(b.len()).for_each(|row| ops::add_assign(row, b));
            }
        }
        let start = cache.len();
        self.rope.tables(start, n, &mut s.cos, &mut s.sin);
        let half = self.rope.half_dim();
        for (heads, per_pos) in [(&mut s.q, c.n_heads), (&mut s.k, c.n_kv_heads)] {
            for (i, head) in heads.chunks_mut(hd).enumerate() {
                let p = i / per_pos;
                ops::rope(head, &s.cos[p * half..(p + 1) * half], &s.sin[p * half..(p + 1) * half], self.rope.interleaved);
            }
        }
        cache.append(l, &s.k, &s.v);
        let (kc, vc) = cache.layer(l);
        let shape = AttnShape { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: hd, start };
        attention(&shape, &s.q, kc, vc, &mut s.attn)?;
        run_group(&mut [Product { w: layer.wo.mat(), out: &mut s.attn_out }], &s.attn, n, &mut s.attn_q8)
    }

    fn logits(&self, s: &mut Scratch, n: usize, want: Logits) -> Result<()> {
        let dim = self.config.dim;
        let rows = match want {
            Logits::Last => n - 1..n,
            Logits::All => 0..n,
        };
        rms_norm_rows(&s.x[rows.start * dim..rows.end * dim], &self.output_norm, self.config.rms_eps, &mut s.h);
        let m = rows.len();
        s.logits.resize(m * self.config.vocab_size, 0.0);
        run_group(&mut [Product { w: self.output.mat(), out: &mut s.logits }], &s.h[..m * dim], m, &mut s.h_q8)
    }

    /// Each layer's FFN matrices.
    pub(crate) fn ffn_mats(&self) -> Vec<crate::sparsity::FfnMats<'_>> {
        self.layers.iter().map(|l| crate::sparsity::FfnMats { gate: l.w_gate.mat(), up: l.w_up.mat(), down: l.w_down.mat() }).collect()
    }

    /// Bytes of each placeable weight as stored (for `placement::Footprint`).
    pub(crate) fn weight_sizes(&self) -> crate::placement::WeightSizes {
        let n = |w: &Weight| w.n_bytes() as u64;
        let f32s = |b: &Option<Vec<f32>>| b.as_ref().map_or(0, |b| 4 * b.len() as u64);
        let layers = self.layers.iter().map(|l| crate::placement::LayerSizes {
            attention: [n(&l.wq), n(&l.wk), n(&l.wv), n(&l.wo)],
            biases: [f32s(&l.bq), f32s(&l.bk), f32s(&l.bv)],
            ffn: [n(&l.w_gate), n(&l.w_up), n(&l.w_down)],
        });
        crate::placement::WeightSizes { layers: layers.collect(), output: n(&self.output) }
    }

    /// The FFN sparsity setting in use.
    pub fn sparsity(&self) -> Option<&SparseFfn> {
        self.sparse.as_ref()
    }

    /// Bytes of weights the forward pass reads per token (each matrix once; a tied embedding
    /// counted once, as the output matrix).
    pub fn weight_bytes(&self) -> usize {
        let mats = self.layers.iter().flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        mats.map(|w| w.n_bytes()).sum::<usize>() + self.output.n_bytes()
    }
}

/// Runs a group of products that share the input `x` (`(n, cols)`), quantizing it to 8 bits
/// into `q8` first when one of them uses integer dots.
fn run_group(group: &mut [Product<'_>], x: &[f32], n: usize, q8: &mut Q8Acts) -> Result<()> {
    let quantize = group.iter().any(|p| needs_q8(&p.w));
    if quantize {
        quantize_q8_rows(x, q8);
    }
    matmul_group(group, Input { x, q8: quantize.then_some(&*q8), n_tokens: n })?;
    Ok(())
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(x);
    for row in out.chunks_mut(weight.len()) {
        ops::rms_norm(row, weight, eps);
    }
}

/// Buffers of one forward call, kept between calls so decoding allocates nothing.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,        // (n, dim) residual stream
    h: Vec<f32>,        // (n, dim) normed
    h_q8: Q8Acts,       // h quantized to 8 bits
    q: Vec<f32>,        // (n, n_heads*head_dim)
    k: Vec<f32>,        // (n, n_kv_heads*head_dim)
    v: Vec<f32>,        // (n, n_kv_heads*head_dim)
    cos: Vec<f32>,      // (n, head_dim/2)
    sin: Vec<f32>,      // (n, head_dim/2)
    attn: Vec<f32>,     // (n, n_heads*head_dim)
    attn_q8: Q8Acts,
    attn_out: Vec<f32>, // (n, dim)
    gate: Vec<f32>,     // (n, ffn_dim), then act(gate) * up
    act: Vec<f32>,      // (n, ffn_dim) act(gate), kept where the profiler or the gate criterion needs it
    gate_q8: Q8Acts,
    up: Vec<f32>,       // (n, ffn_dim)
    ffn_out: Vec<f32>,  // (n, dim)
    logits: Vec<f32>,   // (n or 1, vocab)
    sp: ffn::SparseScratch,
    /// FFN neurons kept and evaluated since the cache was made (or the stats were taken).
    pub(crate) stats: SparsityStats,
}

impl Scratch {
    fn resize(&mut self, c: &ModelConfig, n: usize) {
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        for (buf, width) in [
            (&mut self.x, c.dim),
            (&mut self.q, q_dim),
            (&mut self.k, kv_dim),
            (&mut self.v, kv_dim),
            (&mut self.attn, q_dim),
            (&mut self.attn_out, c.dim),
            (&mut self.gate, c.ffn_dim),
            (&mut self.up, c.ffn_dim),
            (&mut self.ffn_out, c.dim),
        ] {
            buf.resize(n * width, 0.0);
        }
    }
}
