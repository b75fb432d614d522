//! Causal multi-head attention with grouped KV heads over a KV cache (eager: scores, softmax,
//! weighted sum, as in transformers' `eager_attention_forward`), one KV head and its query heads
//! per task.
//!
//! The per-head body is written with 8-lane arrays and compiled twice: with AVX2 + FMA (chosen
//! at run time once per call) and for the baseline target, so the dots over the keys and the
//! weighted sum of the values run as 8-wide vector code without a call per key. Head sizes 64
//! and 128 on x86-64 with AVX2 + FMA take `attention_x86.rs` instead: fused multiply-adds, eight
//! keys' scores reduced together, and each head's output summed in registers.

use rayon::prelude::*;

use super::ops::softmax;
use crate::{KernelError, Result};

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Position of the first query.
    pub start: usize,
}

/// `q` is `(n, n_heads*head_dim)` for positions `start..start+n`; `k`/`v` hold `(start+n,
/// n_kv_heads*head_dim)`; `out` receives `(n, n_heads*head_dim)`.
pub fn attention(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<()> {
    let hd = s.head_dim;
    let (q_dim, kv_dim) = (s.n_heads * hd, s.n_kv_heads * hd);
    let n = if q_dim == 0 { 0 } else { q.len() / q_dim };
    let keys = s.start + n;
    if hd == 0 || s.n_kv_heads == 0 || s.n_heads % s.n_kv_heads != 0 || q.len() != n * q_dim || out.len() != q.len()
        || k.len() < keys * kv_dim || v.len() < keys * kv_dim
    {
        return Err(KernelError::Shape {
            op: "attention",
            expected: format!("{s:?}: q and out {n}x{q_dim}, k and v {keys}x{kv_dim}"),
            got: format!("q {}, out {}, k {}, v {} elements", q.len(), out.len(), k.len(), v.len()),
        });
    }
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let simd = has_avx2();
    // One task per (position, KV head): the `group` query heads that read a KV head are
    // contiguous in `q` and `out`, and go over its keys and values together, so the cache is
    // read once per KV head instead of once per query head.
    out.par_chunks_mut(group * hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let (t, kvh) = (i / s.n_kv_heads, i % s.n_kv_heads);
        let heads = Heads {
            q: &q[t * q_dim + kvh * group * hd..][..group * hd],
            k,
            v,
            kv_dim,
            offset: kvh * hd,
            n_keys: s.start + t + 1,
            scale,
        };
        if simd {
            // SAFETY: `has_avx2` confirmed AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match hd {
                    64 => x86::heads::<64>(&heads, scores, o),
                    128 => x86::heads::<128>(&heads, scores, o),
                    _ => heads_avx2(&heads, hd, scores, o),
                }
            }
        } else {
            heads_body(&heads, hd, scores, o)
        }
    });
    Ok(())
}

/// The query heads of one KV head at one position, and where that KV head's columns are in the
/// cache rows.
struct Heads<'a> {
    q: &'a [f32], // (group, head_dim)
    k: &'a [f32], // (positions, kv_dim)
    v: &'a [f32], // (positions, kv_dim)
    kv_dim: usize,
    offset: usize,
    n_keys: usize,
    scale: f32,
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn heads_avx2(h: &Heads<'_>, hd: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
    heads_body(h, hd, scores, o)
}

#[inline(always)]
fn heads_body(h: &Heads<'_>, hd: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
    match hd {
        64 => heads_fixed::<64>(h, scores, o),
        128 => heads_fixed::<128>(h, scores, o),
        _ => heads_any(h, hd, scores, o),
    }
}

/// [`heads_any`] for a head size known at compile time (fixed-size rows vectorize fully).
#[inline(always)]
fn heads_fixed<const HD: usize>(h: &Heads<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    let (g, n) = (h.q.len() / HD, h.n_keys);
    scores.clear();
    scores.resize(g * n, 0.0);
    for p in 0..n {
        let kp: &[f32; HD] = h.k[p * h.kv_dim + h.offset..][..HD].try_into().unwrap_or(&[0.0; HD]);
        for (j, qj) in h.q.chunks_exact(HD).enumerate() {
            scores[j * n + p] = dot8(qj, kp) * h.scale;
        }
    }
    for row in scores.chunks_exact_mut(n) {
        softmax(row);
    }
    o.fill(0.0);
    for p in 0..n {
        let vp: &[f32; HD] = h.v[p * h.kv_dim + h.offset..][..HD].try_into().unwrap_or(&[0.0; HD]);
        for (j, oj) in o.chunks_exact_mut(HD).enumerate() {
            let w = scores[j * n + p];
            for i in 0..HD {
                oj[i] += w * vp[i];
            }
        }
    }
}

#[inline(always)]
fn heads_any(h: &Heads<'_>, hd: usize, scores: &mut Vec<f32>, o: &mut [f32]) {
    let (g, n) = (h.q.len() / hd, h.n_keys);
    scores.clear();
    scores.resize(g * n, 0.0);
    for p in 0..n {
        let kp = &h.k[p * h.kv_dim + h.offset..][..hd];
        for (j, qj) in h.q.chunks_exact(hd).enumerate() {
            scores[j * n + p] = dot8(qj, kp) * h.scale;
        }
    }
    for row in scores.chunks_exact_mut(n) {
        softmax(row);
    }
    o.fill(0.0);
    for p in 0..n {
        let vp = &h.v[p * h.kv_dim + h.offset..][..hd];
        for (j, oj) in o.chunks_exact_mut(hd).enumerate() {
            let w = scores[j * n + p];
            for (oi, vi) in oj.iter_mut().zip(vp) {
                *oi += w * vi;
            }
        }
    }
}

/// Dot product in eight lanes (vectorizes without reassociating floats).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += xa[l] * xb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[path = "attention_x86.rs"]
mod x86;
