//! The legacy 32-element block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: layouts from ggml's
//! `ggml-common.h` (`block_q4_0` …), formulas from `ggml-quants.c` (`dequantize_row_q4_0` …).
//!
//! Each format is a [`Legacy`] block that decodes into 32 f32 values in a stack array, with the
//! exact arithmetic of ggml's reference code: `dequantize` stores them, `dot` multiplies them with
//! `x` into four independent 8-lane accumulators. Nothing is allocated; all calls are static and
//! `#[inline(always)]`, so the AVX2 copies in `dispatch.rs` get all of it.

use super::common::f16_at;
use super::simd::{store32, Acc32, Simd};

/// Elements per block.
const QK: usize = 32;

/// One legacy format: its block size and its block decoder.
trait Legacy {
    /// Bytes per block.
    const BYTES: usize;
    fn decode(b: &[u8]) -> [f32; QK];
}

/// `block_q4_0 { d: f16, qs: [u8; 16] }` (18 bytes):
/// element `j` is `(qs[j] & 0xF) - 8`, element `j + 16` is `(qs[j] >> 4) - 8`, both times `d`.
struct Q40;

impl Legacy for Q40 {
    const BYTES: usize = 18;

    #[inline(always)]
    fn decode(b: &[u8]) -> [f32; QK] {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        let mut v = [0f32; QK];
        for j in 0..QK / 2 {
            v[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
            v[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        }
        v
    }
}

/// `block_q4_1 { d: f16, m: f16, qs: [u8; 16] }` (20 bytes): `q * d + m`, `q` unsigned 4-bit.
struct Q41;

impl Legacy for Q41 {
    const BYTES: usize = 20;

    #[inline(always)]
    fn decode(b: &[u8]) -> [f32; QK] {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qs = &b[4..20];
        let mut v = [0f32; QK];
        for j in 0..QK / 2 {
            v[j] = (qs[j] & 0x0F) as f32 * d + m;
            v[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
        }
        v
    }
}

/// The fifth bits of a Q5 block: bit `j` of the little-endian `qh` word belongs to element `j`.
#[inline(always)]
fn high_bits(qh: &[u8]) -> u32 {
    u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]])
}

/// `block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] }` (22 bytes): 5-bit `q - 16`, times `d`.
struct Q50;

impl Legacy for Q50 {
    const BYTES: usize = 22;

    #[inline(always)]
    fn decode(b: &[u8]) -> [f32; QK] {
        let d = f16_at(b, 0);
        let qh = high_bits(&b[2..6]);
        let qs = &b[6..22];
        let mut v = [0f32; QK];
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + QK / 2)) & 1) << 4;
            v[j] = (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
            v[j + QK / 2] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
        }
        v
    }
}

/// `block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }` (24 bytes): 5-bit `q * d + m`.
struct Q51;

impl Legacy for Q51 {
    const BYTES: usize = 24;

    #[inline(always)]
    fn decode(b: &[u8]) -> [f32; QK] {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = high_bits(&b[4..8]);
        let qs = &b[8..24];
        let mut v = [0f32; QK];
        for j in 0..QK / 2 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + QK / 2)) & 1) << 4;
            v[j] = ((qs[j] & 0x0F) as u32 | h0) as f32 * d + m;
            v[j + QK / 2] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
        }
        v
    }
}

/// `block_q8_0 { d: f16, qs: [i8; 32] }` (34 bytes): `q * d`.
struct Q80;

impl Legacy for Q80 {
    const BYTES: usize = 34;

    #[inline(always)]
    fn decode(b: &[u8]) -> [f32; QK] {
        let d = f16_at(b, 0);
        let qs = &b[2..34];
        let mut v = [0f32; QK];
        for j in 0..QK {
            v[j] = (qs[j] as i8) as f32 * d;
        }
        v
    }
}

#[inline(always)]
fn dequantize_blocks<S: Simd, F: Legacy>(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(F::BYTES).zip(out.chunks_exact_mut(QK)) {
        store32::<S>(&F::decode(&b[..F::BYTES]), o);
    }
}

#[inline(always)]
fn dot_blocks<S: Simd, F: Legacy>(bytes: &[u8], x: &[f32]) -> f32 {
    let mut acc = Acc32::<S>::new();
    for (b, xs) in bytes.chunks_exact(F::BYTES).zip(x.chunks_exact(QK)) {
        acc.add(&F::decode(&b[..F::BYTES]), xs);
    }
    acc.sum()
}

/// One `dequantize_*` / `dot_*` pair per format.
macro_rules! row_kernels {
    ($($format:ident => $dequantize:ident, $dot:ident;)*) => {$(
        #[inline(always)]
        pub(super) fn $dequantize<S: Simd>(bytes: &[u8], out: &mut [f32]) {
            dequantize_blocks::<S, $format>(bytes, out)
        }

        #[inline(always)]
        pub(super) fn $dot<S: Simd>(bytes: &[u8], x: &[f32]) -> f32 {
            dot_blocks::<S, $format>(bytes, x)
        }
    )*};
}

row_kernels! {
    Q40 => dequantize_q4_0, dot_q4_0;
    Q41 => dequantize_q4_1, dot_q4_1;
    Q50 => dequantize_q5_0, dot_q5_0;
    Q51 => dequantize_q5_1, dot_q5_1;
    Q80 => dequantize_q8_0, dot_q8_0;
}
