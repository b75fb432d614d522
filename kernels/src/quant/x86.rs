//! AVX2+FMA(+F16C) lanes for the `#[target_feature(enable = "avx2,fma,f16c")]` copies of the
//! kernels (x86-64 only; `dispatch.rs` selects them after `is_x86_feature_detected!`). Every CPU
//! with AVX2 also has F16C (Intel since Ivy Bridge, AMD since Piledriver).

use super::simd::Simd;
use std::arch::x86_64::{
    __m128i, __m256, _mm256_add_ps, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
    _mm256_storeu_ps, _mm_loadu_si128,
};

/// `__m256` lanes.
///
/// Its functions are safe to name but must only *run* on a CPU with AVX2, FMA and F16C: they are
/// used solely as the `S` of kernel bodies instantiated inside `dispatch.rs`'s
/// `#[target_feature(enable = "avx2,fma,f16c")]` functions, which are reachable only after the
/// three features were detected. Keep it private to the quant module.
pub(super) struct Avx2;

impl Simd for Avx2 {
    type V = __m256;

    #[inline(always)]
    fn zero() -> __m256 {
        // SAFETY: AVX is present (see the type's documentation).
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    fn load(s: &[f32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 f32 (checked above); `loadu` has no alignment requirement; AVX is
        // present (see the type's documentation).
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    #[inline(always)]
    fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA is present (see the type's documentation).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is present (see the type's documentation).
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    fn to_array(v: __m256) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: `out` has room for 8 f32; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[inline(always)]
    fn store(v: __m256, out: &mut [f32]) {
        let out = &mut out[..8];
        // SAFETY: `out` has room for 8 f32 (checked above); `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
    }

    #[inline(always)]
    fn load_f16(b: &[u8]) -> __m256 {
        let b = &b[..16];
        // SAFETY: `b` holds 16 bytes (checked above); `loadu` has no alignment requirement; F16C
        // is present (see the type's documentation). `vcvtph2ps` converts exactly.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast::<__m128i>())) }
    }

    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c) // one `vfmadd` inside the `fma` functions
    }
}
