//! Causal multi-head attention with grouped KV heads over a KV cache (eager: scores, softmax,
//! weighted sum, as in transformers' `eager_attention_forward`), one query head per task.
//!
//! The per-head body is written with 8-lane arrays and compiled twice: with AVX2 + FMA (chosen
//! at run time once per call) and for the baseline target, so the dots over the keys and the
//! weighted sum of the values run as 8-wide vector code without a call per key.

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
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let (t, h) = (i / s.n_heads, i % s.n_heads);
        let head = Head {
            q: &q[t * q_dim + h * hd..][..hd],
            k,
            v,
            kv_dim,
            offset: (h / group) * hd,
            n_keys: s.start + t + 1,
            scale,
        };
        if simd {
            // SAFETY: `has_avx2` confirmed AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                head_avx2(&head, scores, o)
            }
        } else {
            head_body(&head, scores, o)
        }
    });
    Ok(())
}

/// One query head: its query row and where its KV head's columns are in the cache rows.
struct Head<'a> {
    q: &'a [f32], // (head_dim)
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
unsafe fn head_avx2(h: &Head<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    head_body(h, scores, o)
}

#[inline(always)]
fn head_body(h: &Head<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    match h.q.len() {
        64 => head_fixed::<64>(h, scores, o),
        128 => head_fixed::<128>(h, scores, o),
        _ => head_any(h, scores, o),
    }
}

/// [`head_any`] for a head size known at compile time: the query and the running weighted sum
/// live in registers instead of being reloaded and stored for every key.
#[inline(always)]
fn head_fixed<const HD: usize>(h: &Head<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    let mut q = [0f32; HD];
    q.copy_from_slice(h.q);
    scores.clear();
    for p in 0..h.n_keys {
        let kp: &[f32; HD] = h.k[p * h.kv_dim + h.offset..][..HD].try_into().unwrap_or(&[0.0; HD]);
        scores.push(dot8(&q, kp) * h.scale);
    }
    softmax(scores);
    let mut acc = [0f32; HD];
    for (p, &w) in scores.iter().enumerate() {
        let vp: &[f32; HD] = h.v[p * h.kv_dim + h.offset..][..HD].try_into().unwrap_or(&[0.0; HD]);
        for i in 0..HD {
            acc[i] += w * vp[i];
        }
    }
    o.copy_from_slice(&acc);
}

#[inline(always)]
fn head_any(h: &Head<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    let hd = h.q.len();
    scores.clear();
    for p in 0..h.n_keys {
        let kp = &h.k[p * h.kv_dim + h.offset..][..hd];
        scores.push(dot8(h.q, kp) * h.scale);
    }
    softmax(scores);
    o.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let vp = &h.v[p * h.kv_dim + h.offset..][..hd];
        for (oi, vi) in o.iter_mut().zip(vp) {
            *oi += w * vi;
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
