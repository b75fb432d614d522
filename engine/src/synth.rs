//! Synthetic llama-architecture models (`ember synth`) with random weights and controlled FFN
//! activation statistics, so the sparse paths can be measured at real sizes without a download.
//! Every figure obtained with one is synthetic.
//!
//! The residual stream is dominated by a shared direction `u`: every embedding row is
//! `κ√dim·u + n_t` (n_t ~ N(0, 1) per element) and the blocks add little, so the FFN input `x`
//! has about the same component `C` along `u` for every token. Gate row j is `α_j·u + B·w_j`
//! with `B` a random rank-`LOW_RANK` basis: `gate_j·x ≈ α_j·C + σ·z` with z ~ N(0, 1), so neuron j
//! fires (ReLU) with probability Φ(α_j·C/σ). The offsets α_j give power-law firing rates whose
//! mean is 1 − sparsity (sparse and skewed, like ReLU LLMs), and the active set is a low-rank
//! function of x (learnable by the predictors).

use std::path::Path;

use ember_kernels::quant::quantize::quantize_row;
use ember_kernels::DType;
use rayon::prelude::*;

use crate::config::Activation;
use crate::error::{EngineError, Result};
use crate::gguf::{GgufWriter, MetaValue};

/// Rank of the random part of the gate rows.
const LOW_RANK: usize = 16;
/// Share of the embedding's norm along the shared direction (κ).
const SHARED: f32 = 2.0;
/// Scale of the blocks' outputs (wo, down) relative to a unit-variance product.
const BLOCK_OUT: f32 = 0.05;

#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub dim: usize,
    pub ffn_dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub act: Activation,
    /// Target share of FFN neurons inactive per token (ReLU); with SiLU the same offsets
    /// make the same neurons small.
    pub sparsity: f32,
    pub dtype: DType,
    pub seed: u64,
}

impl SynthSpec {
    /// A named shape: `tiny`, `small`, `1b`, `7b`, `13b` (llama 2 sizes for the last two).
    pub fn shape(name: &str, act: Activation, sparsity: f32, dtype: DType) -> Option<SynthSpec> {
        let (dim, ffn_dim, layers, heads, kv_heads, vocab) = match name {
            "tiny" => (256, 1024, 4, 4, 2, 512),
            "small" => (1024, 4096, 8, 16, 4, 4096),
            "1b" => (2048, 5632, 22, 32, 4, 32000),
            "7b" => (4096, 11008, 32, 32, 32, 32000),
            "13b" => (5120, 13824, 40, 40, 40, 32000),
            _ => return None,
        };
        Some(SynthSpec { dim, ffn_dim, layers, heads, kv_heads, vocab, ctx: 4096, act, sparsity, dtype, seed: 1 })
    }

    /// Bytes of the weights in the file.
    pub fn weight_bytes(&self) -> usize {
        let hd = self.dim / self.heads;
        let per_layer = self.dim * (2 * self.dim + 2 * self.kv_heads * hd) + 3 * self.dim * self.ffn_dim;
        let elems = per_layer * self.layers + 2 * self.vocab * self.dim;
        elems / self.dtype.block_len() * self.dtype.block_bytes()
    }
}

/// Writes the model to `path` (through a temporary file); `progress(done, total)` per tensor.
pub fn write_synthetic(spec: &SynthSpec, path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    let s = spec;
    let bad = |problem: String| EngineError::Param { name: "synth", problem };
    if s.dim % s.heads != 0 || s.heads % s.kv_heads != 0 || s.dim % 32 != 0 || s.ffn_dim % 32 != 0 {
        return Err(bad(format!("dims {}/{} heads {}/{} do not divide into blocks of 32 and heads", s.dim, s.ffn_dim, s.heads, s.kv_heads)));
    }
    if !(0.0..1.0).contains(&s.sparsity) {
        return Err(bad(format!("sparsity {} is outside [0, 1)", s.sparsity)));
    }
    let hd = s.dim / s.heads;
    let mut w = GgufWriter::new();
    meta(&mut w, s);
    let u = unit(s.dim, s.seed ^ 0x5EED);
    let total = 2 + s.layers * 8;
    let mut done = 0;
    let mut tick = |progress: &mut dyn FnMut(usize, usize)| {
        done += 1;
        progress(done, total);
    };
    let c = (s.dim as f32).sqrt() * SHARED;
    let embed = gen_rows(s.vocab, s.dim, s.seed, |_, row| row.iter_mut().zip(&u).for_each(|(v, uu)| *v += c * uu), 1.0);
    put(&mut w, "token_embd.weight", s.vocab, s.dim, &embed, s.dtype)?;
    tick(progress);
    // The FFN input's component along u, and the spread of the low-rank part (see the header).
    let scale = 1.0 / (SHARED * SHARED + 1.0).sqrt();
    let (big_c, sigma) = (c * scale, scale);
    let rates = firing_rates(s.ffn_dim, 1.0 - s.sparsity);
    let q_rows = [(s.dim, 1.0), (s.kv_heads * hd, 1.0), (s.kv_heads * hd, 1.0)];
    for l in 0..s.layers {
        let seed = s.seed.wrapping_add(1000 * (l as u64 + 1));
        for (i, (name, (rows, sc))) in ["attn_q", "attn_k", "attn_v"].iter().zip(q_rows).enumerate() {
            let m = gen_rows(rows, s.dim, seed + i as u64, |_, _| {}, sc / (s.dim as f32).sqrt());
            put(&mut w, &format!("blk.{l}.{name}.weight"), rows, s.dim, &m, s.dtype)?;
            tick(progress);
        }
        let wo = gen_rows(s.dim, s.dim, seed + 3, |_, _| {}, BLOCK_OUT / (s.dim as f32).sqrt());
        put(&mut w, &format!("blk.{l}.attn_output.weight"), s.dim, s.dim, &wo, s.dtype)?;
        tick(progress);
        let basis = gen_rows(LOW_RANK, s.dim, seed + 4, |_, _| {}, 1.0 / (s.dim as f32).sqrt()); // (r, dim)
        let gate = gen_gate(s, &basis, &u, &rates, big_c, sigma, seed + 5);
        put(&mut w, &format!("blk.{l}.ffn_gate.weight"), s.ffn_dim, s.dim, &gate, s.dtype)?;
        tick(progress);
        let up = gen_rows(s.ffn_dim, s.dim, seed + 6, |_, _| {}, 1.0 / (s.dim as f32).sqrt());
        put(&mut w, &format!("blk.{l}.ffn_up.weight"), s.ffn_dim, s.dim, &up, s.dtype)?;
        tick(progress);
        let down = gen_rows(s.dim, s.ffn_dim, seed + 7, |_, _| {}, BLOCK_OUT * 4.0 / (s.ffn_dim as f32).sqrt());
        put(&mut w, &format!("blk.{l}.ffn_down.weight"), s.dim, s.ffn_dim, &down, s.dtype)?;
        tick(progress);
        for norm in ["attn_norm", "ffn_norm"] {
            put(&mut w, &format!("blk.{l}.{norm}.weight"), 1, s.dim, &vec![1.0; s.dim], DType::F32)?;
        }
        tick(progress);
    }
    put(&mut w, "output_norm.weight", 1, s.dim, &vec![1.0; s.dim], DType::F32)?;
    // Its own output matrix: logits of unit spread (the embedding's shared part would make one
    // huge logit).
    let out = gen_rows(s.vocab, s.dim, s.seed.wrapping_add(77), |_, _| {}, 1.0 / (s.dim as f32).sqrt());
    put(&mut w, "output.weight", s.vocab, s.dim, &out, s.dtype)?;
    tick(progress);
    w.write(path)
}

fn meta(w: &mut GgufWriter, s: &SynthSpec) {
    let act = match s.act {
        Activation::Relu => "relu",
        Activation::Silu => "silu",
        Activation::Gelu => "gelu",
    };
    let u32v = |v: usize| MetaValue::U32(v as u32);
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("general.name", MetaValue::String(format!("synthetic {act} {}x{} sparsity {}", s.dim, s.layers, s.sparsity)))
        .meta("llama.context_length", u32v(s.ctx))
        .meta("llama.embedding_length", u32v(s.dim))
        .meta("llama.feed_forward_length", u32v(s.ffn_dim))
        .meta("llama.block_count", u32v(s.layers))
        .meta("llama.attention.head_count", u32v(s.heads))
        .meta("llama.attention.head_count_kv", u32v(s.kv_heads))
        .meta("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5))
        .meta("llama.rope.freq_base", MetaValue::F32(10000.0))
        .meta("llama.activation_function", MetaValue::String(act.into()))
        .meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", MetaValue::String("gpt-2".into()))
        .meta("tokenizer.ggml.tokens", MetaValue::strings(&byte_vocab(s.vocab)))
        .meta("tokenizer.ggml.merges", MetaValue::strings::<&str>(&[]));
}

/// GPT-2's byte-level symbols for the 256 bytes (any text tokenizes), then filler tokens.
fn byte_vocab(n: usize) -> Vec<String> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    let mut v: Vec<String> = (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).map(String::from).unwrap_or_default()
        })
        .collect();
    v.extend((256..n.max(256)).map(|i| format!("<t{i}>")));
    v
}

/// Rows of N(0, scale²) values (deterministic per seed and row), each passed to `edit`.
fn gen_rows(rows: usize, cols: usize, seed: u64, edit: impl Fn(usize, &mut [f32]) + Sync, scale: f32) -> Vec<f32> {
    let mut m = vec![0.0f32; rows * cols];
    m.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let mut g = Gauss::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (r as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        row.iter_mut().for_each(|v| *v = g.next() * scale);
        edit(r, row);
    });
    m
}

/// Gate rows `α_j·u + B·w_j`, w_j ~ N(0, 1/r), so `gate_j·x` has spread σ around `α_j·C`.
fn gen_gate(s: &SynthSpec, basis: &[f32], u: &[f32], rates: &[f32], c: f32, sigma: f32, seed: u64) -> Vec<f32> {
    let r = LOW_RANK;
    let coef = gen_rows(s.ffn_dim, r, seed, |_, _| {}, 1.0 / (r as f32).sqrt()); // (ffn, r)
    let mut gate = vec![0.0f32; s.ffn_dim * s.dim];
    gate.par_chunks_mut(s.dim).enumerate().for_each(|(j, row)| {
        let alpha = sigma * inverse_normal_cdf(rates[j] as f64) as f32 / c;
        for (k, cf) in coef[j * r..(j + 1) * r].iter().enumerate() {
            for (v, b) in row.iter_mut().zip(&basis[k * s.dim..(k + 1) * s.dim]) {
                *v += cf * b;
            }
        }
        // Orthogonal to u, so the offset along u is α_j alone (C times a random projection
        // would otherwise swamp it).
        let along: f32 = row.iter().zip(u).map(|(v, uu)| v * uu).sum();
        row.iter_mut().zip(u).for_each(|(v, uu)| *v += (alpha - along) * uu);
    });
    gate
}

/// Power-law firing rates (Zipf-like over a shuffled neuron order) with the given mean.
fn firing_rates(n: usize, mean: f32) -> Vec<f32> {
    let rate = |a: f32, i: usize| (a / (1.0 + i as f32 / 8.0)).clamp(0.002, 0.98);
    let (mut lo, mut hi) = (0.0f32, 100.0f32);
    for _ in 0..60 {
        let a = (lo + hi) / 2.0;
        let m: f32 = (0..n).map(|i| rate(a, i)).sum::<f32>() / n as f32;
        if m < mean { lo = a } else { hi = a }
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut g = Gauss::new(12345);
    for i in (1..n).rev() {
        order.swap(i, (g.bits() % (i as u64 + 1)) as usize);
    }
    let mut out = vec![0.0; n];
    for (i, &j) in order.iter().enumerate() {
        out[j] = rate(lo, i);
    }
    out
}

fn unit(n: usize, seed: u64) -> Vec<f32> {
    let v = gen_rows(1, n, seed, |_, _| {}, 1.0);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn put(w: &mut GgufWriter, name: &str, rows: usize, cols: usize, data: &[f32], dtype: DType) -> Result<()> {
    let dtype = if rows == 1 { DType::F32 } else { dtype };
    let bytes: Vec<Vec<u8>> = data.par_chunks(cols).map(|r| quantize_row(dtype, r)).collect::<Result<_, _>>()?;
    let dims = if rows == 1 { vec![cols] } else { vec![cols, rows] };
    w.tensor(name, &dims, dtype, bytes.concat());
    Ok(())
}

/// Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383577518672690e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0);
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// xorshift64* with Box-Muller normals: fast, deterministic per seed.
struct Gauss(u64);

impl Gauss {
    fn new(seed: u64) -> Gauss {
        Gauss(seed | 1)
    }
    fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn next(&mut self) -> f32 {
        let u1 = ((self.bits() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.bits() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_known_values() {
        for (p, z) in [(0.5, 0.0), (0.975, 1.959964), (0.01, -2.326348), (0.9999, 3.719016)] {
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-5, "Φ⁻¹({p}) = {}", inverse_normal_cdf(p));
        }
    }

    #[test]
    fn firing_rates_have_the_mean_and_are_skewed() {
        let r = firing_rates(1024, 0.1);
        let mean = r.iter().sum::<f32>() / 1024.0;
        assert!((mean - 0.1).abs() < 0.002, "mean rate {mean}");
        let mut s = r.clone();
        s.sort_by(|a, b| b.total_cmp(a));
        let top: f32 = s[..205].iter().sum(); // the top 20% of neurons
        assert!(top / r.iter().sum::<f32>() > 0.5, "the top 20% hold {:.2} of activations", top / r.iter().sum::<f32>());
    }
}
