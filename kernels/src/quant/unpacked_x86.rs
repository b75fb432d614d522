//! AVX2 dot of unpacked rows (see `unpacked.rs`) with 8-bit activations. Per block of 32:
//! `vpmaddubsw` + `vpmaddwd` give 8 i32 lanes (lanes 0–3 the first group of 16, 4–7 the
//! second), converted and multiplied by the block's lane scales `dv·d_a`; four accumulators
//! break the dependency chain. The offsets `m_g·S_g·d_a` are a separate 8-lane FMA per four
//! blocks.

use std::arch::x86_64::*;

use super::{whole_blocks, Unpacked};
use crate::quant::q8::{Q8Ref, Q8_BLOCK};

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

pub(super) fn dot_rows(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    // SAFETY: `available` confirmed the features (checked by the caller).
    unsafe { dot_rows_avx2(u, acts, out) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(u: &Unpacked, acts: Q8Ref<'_>, out: &mut [f32]) {
    let nb = whole_blocks(u, acts);
    let nblk = u.cols / Q8_BLOCK;
    for (r, o) in out.iter_mut().enumerate().take(u.rows) {
        let q = &u.q[r * u.cols..][..nb * Q8_BLOCK];
        let dv = &u.dv[r * nblk * 8..][..nb * 8];
        let m = &u.m[r * nblk * 2..][..nb * 2];
        // SAFETY: every slice above holds `nb` blocks, and so do the activations.
        *o = unsafe { dot_row(q, dv, m, acts, nb) };
    }
}

/// # Safety
/// AVX2 and FMA are present; `q`, `dv`, `m` and `acts` hold `nb` blocks.
#[inline(always)]
unsafe fn dot_row(q: &[u8], dv: &[f32], m: &[f32], acts: Q8Ref<'_>, nb: usize) -> f32 {
    let (q, dv, m) = (q.as_ptr(), dv.as_ptr(), m.as_ptr());
    let (y, da, s16) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.sum16.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut macc = _mm256_setzero_ps();
    let mut b = 0;
    // SAFETY: every read is of blocks below `nb` (see the contract).
    unsafe {
        while b + 4 <= nb {
            for k in 0..4 {
                let bk = b + k;
                let w = _mm256_loadu_si256(q.add(Q8_BLOCK * bk).cast());
                let a = _mm256_loadu_si256(y.add(Q8_BLOCK * bk).cast());
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
                let s = _mm256_mul_ps(_mm256_loadu_ps(dv.add(8 * bk)), _mm256_broadcast_ss(&*da.add(bk)));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[k]);
            }
            // Offsets of the 8 groups of these 4 blocks: m_g · S_g · d_a,(g/2).
            let sums = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128(s16.add(2 * b).cast())));
            let da4 = _mm256_castps128_ps256(_mm_loadu_ps(da.add(b)));
            let da8 = _mm256_permutevar8x32_ps(da4, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
            macc = _mm256_fmadd_ps(_mm256_mul_ps(sums, da8), _mm256_loadu_ps(m.add(2 * b)), macc);
            b += 4;
        }
        let mut tail = 0f32;
        while b < nb {
            let w = _mm256_loadu_si256(q.add(Q8_BLOCK * b).cast());
            let a = _mm256_loadu_si256(y.add(Q8_BLOCK * b).cast());
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
            let s = _mm256_mul_ps(_mm256_loadu_ps(dv.add(8 * b)), _mm256_broadcast_ss(&*da.add(b)));
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[0]);
            let d = *da.add(b);
            tail += d * (*m.add(2 * b) * *s16.add(2 * b) as f32 + *m.add(2 * b + 1) * *s16.add(2 * b + 1) as f32);
            b += 1;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let v = _mm256_add_ps(v, macc);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        _mm_cvtss_f32(h) + tail
    }
}
