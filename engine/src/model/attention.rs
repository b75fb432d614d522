//! Causal multi-head attention with grouped KV heads over the KV cache (eager: scores, softmax,
//! weighted sum, as in transformers' `eager_attention_forward`).

use ember_kernels::cpu::matmul::dot_f32;
use ember_kernels::cpu::ops::softmax;
use rayon::prelude::*;

/// Shapes of one attention call.
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub start: usize, // position of the first query
}

/// `q` is `(n, n_heads*head_dim)` for positions `start..start+n`; `k`/`v` hold `(start+n,
/// n_kv_heads*head_dim)`; `out` receives `(n, n_heads*head_dim)`.
pub fn attention(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let hd = s.head_dim;
    let q_dim = s.n_heads * hd;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let (t, h) = (i / s.n_heads, i % s.n_heads);
        let kvh = h / group;
        let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
        let n_keys = s.start + t + 1;
        o.fill(0.0);
        scores.clear();
        scores.extend((0..n_keys).map(|p| dot_f32(qh, &k[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd]) * scale));
        softmax(scores);
        for (p, w) in scores.iter().enumerate() {
            let vp = &v[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
            for (oi, vi) in o.iter_mut().zip(vp) {
                *oi += w * vi;
            }
        }
    });
}
