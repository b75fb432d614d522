//! The query heads of one KV head over its keys, for a head size known at compile time, with
//! AVX2 + FMA: the same eager attention as `attention.rs` (scores, softmax, weighted sum), with
//! - scores eight keys at a time: each key's dot accumulated in one 8-lane vector by fused
//!   multiply-adds against the query held in registers, the eight vectors then reduced together
//!   by a horizontal-add tree into the eight scores (instead of one full reduction per key);
//! - the weighted sum of the values accumulated in registers, one head at a time (instead of
//!   loading and storing the output row for every key).

use std::arch::x86_64::*;

use super::{softmax, Heads};

/// # Safety
/// AVX2 and FMA are present. `HD` is a multiple of 8 and `h.q.len()` a multiple of `HD`; `o`
/// holds `h.q.len()` floats; every key and value row read (`p·kv_dim + offset .. + HD` for
/// `p < n_keys`) is inside `h.k` / `h.v` (the caller checks the cache lengths).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn heads<const HD: usize>(h: &Heads<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    let (g, n) = (h.q.len() / HD, h.n_keys);
    scores.clear();
    scores.resize(g * n, 0.0);
    let row = |m: &[f32], p: usize| m[p * h.kv_dim + h.offset..][..HD].as_ptr();
    let scale = _mm256_set1_ps(h.scale);
    for (j, qj) in h.q.chunks_exact(HD).enumerate() {
        let mut qv = [_mm256_setzero_ps(); 16];
        for c in 0..HD / 8 {
            // SAFETY: `qj` holds HD floats.
            qv[c] = unsafe { _mm256_loadu_ps(qj.as_ptr().add(8 * c)) };
        }
        let sj = &mut scores[j * n..(j + 1) * n];
        let mut p = 0;
        while p + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (i, a) in acc.iter_mut().enumerate() {
                let kp = row(h.k, p + i);
                for c in 0..HD / 8 {
                    // SAFETY: `kp` points to HD floats of the key row.
                    *a = _mm256_fmadd_ps(qv[c], unsafe { _mm256_loadu_ps(kp.add(8 * c)) }, *a);
                }
            }
            let s8 = _mm256_mul_ps(reduce8(acc), scale);
            // SAFETY: `p + 8 <= n`.
            unsafe { _mm256_storeu_ps(sj.as_mut_ptr().add(p), s8) };
            p += 8;
        }
        for (p, s) in sj.iter_mut().enumerate().skip(p) {
            let kp = row(h.k, p);
            let mut a = _mm256_setzero_ps();
            for c in 0..HD / 8 {
                // SAFETY: as above.
                a = _mm256_fmadd_ps(qv[c], unsafe { _mm256_loadu_ps(kp.add(8 * c)) }, a);
            }
            *s = hsum(a) * h.scale;
        }
    }
    for sj in scores.chunks_exact_mut(n) {
        softmax(sj);
    }
    for (j, oj) in o.chunks_exact_mut(HD).enumerate() {
        let mut acc = [_mm256_setzero_ps(); 16];
        for (p, &w) in scores[j * n..(j + 1) * n].iter().enumerate() {
            let (vp, w) = (row(h.v, p), _mm256_set1_ps(w));
            for c in 0..HD / 8 {
                // SAFETY: `vp` points to HD floats of the value row.
                acc[c] = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(vp.add(8 * c)) }, acc[c]);
            }
        }
        for c in 0..HD / 8 {
            // SAFETY: `oj` holds HD floats.
            unsafe { _mm256_storeu_ps(oj.as_mut_ptr().add(8 * c), acc[c]) };
        }
    }
}

/// The lane sums of eight vectors, as one vector (lane `i` = the sum of `a[i]`).
#[inline(always)]
unsafe fn reduce8(a: [__m256; 8]) -> __m256 {
    let h01 = _mm256_hadd_ps(a[0], a[1]);
    let h23 = _mm256_hadd_ps(a[2], a[3]);
    let h45 = _mm256_hadd_ps(a[4], a[5]);
    let h67 = _mm256_hadd_ps(a[6], a[7]);
    let h0123 = _mm256_hadd_ps(h01, h23); // [a0..a3 over lanes 0-3 | a0..a3 over lanes 4-7]
    let h4567 = _mm256_hadd_ps(h45, h67);
    let lo = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
    let hi = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
    _mm256_add_ps(lo, hi)
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}
