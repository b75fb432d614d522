//! Causal grouped-query attention against a naive f64 implementation, over head sizes with and
//! without a specialized body, several groupings, cache offsets and query counts.

use ember_kernels::cpu::{attention, AttnShape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// f32 summation order against f64, relative to the values' scale (|v| ≤ 1).
const TOL: f64 = 1e-4;

fn naive(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let hd = s.head_dim;
    let (q_dim, kv_dim) = (s.n_heads * hd, s.n_kv_heads * hd);
    let n = q.len() / q_dim;
    let mut out = vec![0.0; q.len()];
    for t in 0..n {
        for h in 0..s.n_heads {
            let kvh = h / (s.n_heads / s.n_kv_heads);
            let keys = s.start + t + 1;
            let scores: Vec<f64> = (0..keys)
                .map(|p| {
                    (0..hd).map(|i| q[t * q_dim + h * hd + i] as f64 * k[p * kv_dim + kvh * hd + i] as f64).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for i in 0..hd {
                out[t * q_dim + h * hd + i] = (0..keys).map(|p| e[p] / sum * v[p * kv_dim + kvh * hd + i] as f64).sum();
            }
        }
    }
    out
}

#[test]
fn attention_matches_naive_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for hd in [64, 128, 40] {
        for (n_heads, n_kv_heads) in [(4, 4), (9, 3), (14, 2)] {
            for (start, n) in [(0, 1), (0, 5), (7, 1), (30, 3), (601, 2)] {
                let s = AttnShape { n_heads, n_kv_heads, head_dim: hd, start };
                let mut r = |len: usize| (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>();
                let q = r(n * n_heads * hd);
                let k = r((start + n) * n_kv_heads * hd);
                let v = r((start + n) * n_kv_heads * hd);
                let mut out = vec![f32::NAN; q.len()];
                attention(&s, &q, &k, &v, &mut out).unwrap();
                for (i, (&got, want)) in out.iter().zip(naive(&s, &q, &k, &v)).enumerate() {
                    assert!((got as f64 - want).abs() <= TOL, "{s:?} n {n}, element {i}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let s = AttnShape { n_heads: 4, n_kv_heads: 3, head_dim: 8, start: 0 };
    assert!(attention(&s, &[0.0; 32], &[0.0; 24], &[0.0; 24], &mut [0.0; 32]).is_err(), "heads not a multiple");
    let s = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8, start: 3 };
    assert!(attention(&s, &[0.0; 32], &[0.0; 16], &[0.0; 16], &mut [0.0; 32]).is_err(), "cache too short");
}
