//! The AVX2 activation quantizer (ggml's `quantize_row_q8_0` AVX2 path, plus the 16-element sums),
//! bit-identical to `append_q8_portable`: the same max, the same two scalar divisions, the same
//! product per element, and `vcvtps2dq` under the default MXCSR rounding (to nearest, ties to
//! even — Rust code never changes it), which is `f32::round_ties_even`.
//!
//! No AVX-512 version: a block is 32 f32 either way, and the quantizer costs about 1/rows of the
//! matrix product that follows (under 1% for every model shape), so it is not worth a copy that
//! this development machine (no AVX-512 exposed) could not test.

//! (Closures in the `#[target_feature]` function below inherit its features; closures in the
//! `#[inline(always)]` helpers of `legacy_q8_x86.rs` would not, which is why that file spells its
//! four-block arrays out.)

use super::{Q8Acts, QuantizeQ8, Q8_BLOCK};
use std::arch::is_x86_feature_detected as has;
use std::arch::x86_64::*;

/// The AVX2 quantizer when this CPU has AVX2.
pub(super) fn variant() -> Option<(&'static str, QuantizeQ8)> {
    if !has!("avx2") {
        return None;
    }
    // SAFETY: AVX2 was detected above.
    Some(("avx2", |x, out| unsafe { append_q8_avx2(x, out) }))
}

#[target_feature(enable = "avx2")]
unsafe fn append_q8_avx2(x: &[f32], out: &mut Q8Acts) {
    let nb = x.len() / Q8_BLOCK;
    let (q0, d0, s0) = (out.qs.len(), out.d.len(), out.sum16.len());
    out.qs.resize(q0 + nb * Q8_BLOCK, 0);
    out.d.resize(d0 + nb, 0.0);
    out.sum16.resize(s0 + 2 * nb, 0);
    let (qs, ds, sums) = (&mut out.qs[q0..], &mut out.d[d0..], &mut out.sum16[s0..]);

    let abs_mask = _mm256_set1_ps(-0.0);
    // `vpackssdw` + `vpacksswb` leave the 4-byte groups of the 32 outputs in this order.
    let unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let block = &x[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
        let p = block.as_ptr();
        // SAFETY: `block` holds 32 f32; `loadu` needs no alignment.
        let v = unsafe { [p, p.add(8), p.add(16), p.add(24)].map(|p| _mm256_loadu_ps(p)) };
        let a = v.map(|v| _mm256_andnot_ps(abs_mask, v));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        ds[b] = d;

        let idv = _mm256_set1_ps(id);
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
        let i16s = (
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16s.0, i16s.1), unshuffle);
        let out = &mut qs[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
        // SAFETY: `out` has room for 32 bytes; `storeu` needs no alignment.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), q) };

        // Sums of 16: `vpsadbw` adds 8 bytes (q + 128) per 64-bit lane.
        let s = _mm256_sad_epu8(
            _mm256_xor_si256(q, _mm256_set1_epi8(-128)),
            _mm256_setzero_si256(),
        );
        let s = _mm256_add_epi64(s, _mm256_shuffle_epi32::<0b01_00_11_10>(s));
        sums[2 * b] = (_mm256_cvtsi256_si32(s) - 16 * 128) as i16;
        sums[2 * b + 1] = (_mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(s)) - 16 * 128) as i16;
    }
}
