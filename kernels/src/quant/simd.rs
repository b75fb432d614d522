//! The one vector abstraction of the kernels: eight f32 lanes with load, multiply-add and sum,
//! and [`Acc32`], the dot-product accumulator built on it.
//!
//! The format files decode blocks with plain scalar Rust into small stack arrays; only the
//! accumulation goes through [`Simd`]. Two implementations:
//! - [`Portable`]: `[f32; 8]` arrays, for any target (NEON's FMA on aarch64, a separate multiply
//!   and add elsewhere);
//! - `x86::Avx2` (x86-64 only): `__m256` intrinsics, used inside the `avx2,fma` copies of the
//!   kernels.
//!
//! Why intrinsics at all: with the workspace's multi-unit release builds (ThinLTO-style pre-link
//! pipeline) LLVM's SLP vectorizer split the array accumulators into 2-wide pieces, while an
//! explicit 256-bit load/FMA both vectorizes the accumulation and, because the decoded block is
//! then read from memory 8 lanes at a time, gets the scalar decoders vectorized too.

use super::common::{f16_to_f32, hsum};

/// Eight f32 lanes.
pub(crate) trait Simd {
    type V: Copy;
    fn zero() -> Self::V;
    /// The first eight elements of `s`.
    fn load(s: &[f32]) -> Self::V;
    /// `a * b + c`, lane by lane.
    fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(a: Self::V, b: Self::V) -> Self::V;
    fn to_array(v: Self::V) -> [f32; 8];
    /// Stores the lanes into the first eight elements of `out`.
    fn store(v: Self::V, out: &mut [f32]);
    /// Eight IEEE halves (the first 16 bytes of `b`, little-endian) as f32, exactly.
    fn load_f16(b: &[u8]) -> Self::V;
    /// Scalar `a * b + c`, with the same rounding as [`Simd::mul_add`]: for tails.
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32;
}

/// Plain arrays; whatever the compiler makes of them on the compile target's baseline.
pub(crate) struct Portable;

impl Simd for Portable {
    type V = [f32; 8];

    #[inline(always)]
    fn zero() -> [f32; 8] {
        [0.0; 8]
    }

    #[inline(always)]
    fn load(s: &[f32]) -> [f32; 8] {
        let s = &s[..8];
        [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]
    }

    #[inline(always)]
    fn mul_add(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::mul_add_scalar(a[i], b[i], c[i]);
        }
        out
    }

    #[inline(always)]
    fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        for (i, o) in out.iter_mut().enumerate() {
            *o = a[i] + b[i];
        }
        out
    }

    #[inline(always)]
    fn to_array(v: [f32; 8]) -> [f32; 8] {
        v
    }

    #[inline(always)]
    fn store(v: [f32; 8], out: &mut [f32]) {
        out[..8].copy_from_slice(&v);
    }

    #[inline(always)]
    fn load_f16(b: &[u8]) -> [f32; 8] {
        let b = &b[..16];
        let mut out = [0f32; 8];
        for (i, o) in out.iter_mut().enumerate() {
            *o = f16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]));
        }
        out
    }

    /// One rounding on aarch64, where every core has FMA.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    /// Two roundings elsewhere: `f32::mul_add` without hardware FMA would call libm's `fmaf`.
    #[cfg(not(target_arch = "aarch64"))]
    #[inline(always)]
    fn mul_add_scalar(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Copies 32 decoded values to `out[..32]` through the lanes: reading the block back from memory
/// eight lanes at a time is what gets the scalar decoder vectorized (see the file header).
#[inline(always)]
pub(crate) fn store32<S: Simd>(v: &[f32; 32], out: &mut [f32]) {
    let out = &mut out[..32];
    for k in 0..4 {
        S::store(S::load(&v[8 * k..]), &mut out[8 * k..]);
    }
}

/// Four independent eight-lane accumulators of a dot product: Σ v_i · x_i, 32 elements at a time.
pub(crate) struct Acc32<S: Simd>([S::V; 4]);

impl<S: Simd> Acc32<S> {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Acc32([S::zero(); 4])
    }

    /// Adds `v[i] * x[i]` for the 32 elements of `v` and the first 32 of `x`.
    #[inline(always)]
    pub(crate) fn add(&mut self, v: &[f32; 32], x: &[f32]) {
        self.add_lanes(
            [S::load(&v[0..]), S::load(&v[8..]), S::load(&v[16..]), S::load(&v[24..])],
            x,
        );
    }

    /// Adds `v[i] * x[i]` for 32 elements already in lanes (`v[k]` holds elements `8k .. 8k + 8`)
    /// and the first 32 of `x`.
    #[inline(always)]
    pub(crate) fn add_lanes(&mut self, v: [S::V; 4], x: &[f32]) {
        let x = &x[..32];
        for (k, acc) in self.0.iter_mut().enumerate() {
            *acc = S::mul_add(v[k], S::load(&x[8 * k..]), *acc);
        }
    }

    /// The sum of all lanes, pairwise.
    #[inline(always)]
    pub(crate) fn sum(self) -> f32 {
        let [a, b, c, d] = self.0;
        hsum(S::to_array(S::add(S::add(a, b), S::add(c, d))))
    }
}
