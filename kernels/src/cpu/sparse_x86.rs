//! 512-bit body of [`super::axpy_rows`]: eight rows of the transposed 8-bit copy at a time, so
//! each block of 32 accumulators is loaded and stored once per eight rows; each row's 32 bytes
//! of a block become two `zmm` of f32 (`vpmovsxbd`, `vcvtdq2ps`) and two FMAs with the row's
//! coefficient times its block scale. The rows [`AHEAD`] groups on are prefetched a line at a
//! time while a group is added (a token's rows are scattered, so the hardware prefetcher does not
//! see them coming).
//!
//! Needs AVX512-F (Skylake-X, Ice Lake, Sapphire Rapids, Zen 4/5).

use std::arch::x86_64::*;

use super::ColumnMajor;
use crate::quant::prefetch_lines;
use crate::quant::q8::Q8_BLOCK;

/// Rows added per pass over the accumulators.
const GROUP: usize = 8;

/// How many groups ahead rows are prefetched.
const AHEAD: usize = 4;

/// Whether this CPU runs [`axpy`].
pub(super) fn detected() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// `acc[..m.padded] += Σ_k coef[k] · d[idx[k]] ⊙ q[idx[k]]` (before the per-output scale).
///
/// # Safety
/// [`detected`] returned true; every index is `< m.n_inputs`; `acc` holds `m.padded` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn axpy(m: &ColumnMajor, idx: &[u32], coef: &[f32], acc: &mut [f32]) {
    debug_assert!(acc.len() >= m.padded && idx.iter().all(|&j| (j as usize) < m.n_inputs));
    let (p, nb) = (m.padded, m.padded / Q8_BLOCK);
    let q = |j: u32| m.q.as_ptr().wrapping_add(j as usize * p);
    let d = |j: u32| m.d.as_ptr().wrapping_add(j as usize * nb);
    let a = acc.as_mut_ptr();
    let mut g = 0;
    // SAFETY (both loops): rows `idx[k] < n_inputs` hold `p` quants and `nb` scales; `acc` holds
    // `p` values; blocks `b < nb` lie within both.
    unsafe {
        while g + GROUP <= idx.len() {
            let ix: [u32; GROUP] = std::array::from_fn(|k| idx[g + k]);
            let ahead = idx.get(g + AHEAD * GROUP..g + (AHEAD + 1) * GROUP).unwrap_or(&[]);
            for &j in ahead {
                prefetch_lines(d(j).cast(), nb * 4);
            }
            for b in 0..nb {
                // The rows of a later group, a line per row every two blocks: a steady stream
                // the memory keeps up with, not a burst that fills the miss queues.
                if b % 2 == 0 {
                    for &j in ahead {
                        prefetch_lines(q(j).add(b * Q8_BLOCK).cast(), 64);
                    }
                }
                let at = a.add(b * Q8_BLOCK);
                let (mut lo, mut hi) = (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)));
                for (k, &j) in ix.iter().enumerate() {
                    (lo, hi) = add_block(q(j).add(b * Q8_BLOCK), coef[g + k] * *d(j).add(b), lo, hi);
                }
                _mm512_storeu_ps(at, lo);
                _mm512_storeu_ps(at.add(16), hi);
            }
            g += GROUP;
        }
        for (&j, &c) in idx[g..].iter().zip(&coef[g..]) {
            for b in 0..nb {
                let at = a.add(b * Q8_BLOCK);
                let (lo, hi) = add_block(q(j).add(b * Q8_BLOCK), c * *d(j).add(b), _mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)));
                _mm512_storeu_ps(at, lo);
                _mm512_storeu_ps(at.add(16), hi);
            }
        }
    }
}

/// `(lo, hi) += s · q[0..32]`.
///
/// # Safety
/// `q` points to 32 readable bytes; AVX512-F is present.
#[inline(always)]
unsafe fn add_block(q: *const i8, s: f32, lo: __m512, hi: __m512) -> (__m512, __m512) {
    // SAFETY: forwarded to the caller.
    unsafe {
        let s = _mm512_set1_ps(s);
        let ql = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast())));
        let qh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast())));
        (_mm512_fmadd_ps(ql, s, lo), _mm512_fmadd_ps(qh, s, hi))
    }
}
