//! The float formats F32, F16 and BF16 (ggml `GGML_TYPE_F32/F16/BF16`): one element per
//! "block", little-endian. The bytes come straight from a memory map and may be unaligned, so
//! every element is read with `from_le_bytes`, never through a cast pointer.
//!
//! A row may have any length: the kernels run over groups of 8 (dequantize) or 32 (dot, four
//! independent 8-lane accumulators) elements and finish the tail one element at a time.

use super::common::{bf16_to_f32, f16_to_f32};
use super::simd::{Acc32, Simd};

const CHUNK: usize = 32;

/// One float format: bytes per element and the element decoder.
trait Element {
    const SIZE: usize;
    fn decode(b: &[u8]) -> f32;

    /// Eight consecutive elements from the start of `b`, as lanes.
    #[inline(always)]
    fn load8<S: Simd>(b: &[u8]) -> S::V {
        let b = &b[..8 * Self::SIZE];
        let mut v = [0f32; 8];
        for (l, v) in v.iter_mut().enumerate() {
            *v = Self::decode(&b[Self::SIZE * l..]);
        }
        S::load(&v)
    }
}

/// IEEE binary32.
struct F32;
/// IEEE binary16.
struct F16;
/// bfloat16: the upper half of a binary32.
struct BF16;

impl Element for F32 {
    const SIZE: usize = 4;

    #[inline(always)]
    fn decode(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Element for F16 {
    const SIZE: usize = 2;

    #[inline(always)]
    fn decode(b: &[u8]) -> f32 {
        f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }

    /// With F16C, one `vcvtph2ps`.
    #[inline(always)]
    fn load8<S: Simd>(b: &[u8]) -> S::V {
        S::load_f16(b)
    }
}

impl Element for BF16 {
    const SIZE: usize = 2;

    #[inline(always)]
    fn decode(b: &[u8]) -> f32 {
        bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Expands `out.len()` elements: eight at a time, then the tail one by one.
#[inline(always)]
fn dequantize<S: Simd, E: Element>(bytes: &[u8], out: &mut [f32]) {
    let lanes_bytes = 8 * E::SIZE;
    let mut outs = out.chunks_exact_mut(8);
    let mut ins = bytes.chunks_exact(lanes_bytes);
    for (o, b) in (&mut outs).zip(&mut ins) {
        S::store(E::load8::<S>(b), o);
    }
    for (o, b) in outs
        .into_remainder()
        .iter_mut()
        .zip(ins.remainder().chunks_exact(E::SIZE))
    {
        *o = E::decode(b);
    }
}

/// Σ element_i · x_i over `x.len()` elements: 32 at a time, then the tail one by one.
#[inline(always)]
fn dot<S: Simd, E: Element>(bytes: &[u8], x: &[f32]) -> f32 {
    let chunk_bytes = E::SIZE * CHUNK;
    let mut acc = Acc32::<S>::new();
    let mut xs = x.chunks_exact(CHUNK);
    let mut ins = bytes.chunks_exact(chunk_bytes);
    for (b, xc) in (&mut ins).zip(&mut xs) {
        let lane = |k: usize| E::load8::<S>(&b[k * 8 * E::SIZE..]);
        acc.add_lanes([lane(0), lane(1), lane(2), lane(3)], xc);
    }
    let mut tail = 0f32;
    for (b, &xi) in ins.remainder().chunks_exact(E::SIZE).zip(xs.remainder()) {
        tail = S::mul_add_scalar(E::decode(b), xi, tail);
    }
    acc.sum() + tail
}

/// One `dequantize_*` / `dot_*` pair per format.
macro_rules! row_kernels {
    ($($format:ident => $dequantize:ident, $dot:ident;)*) => {$(
        #[inline(always)]
        pub(super) fn $dequantize<S: Simd>(bytes: &[u8], out: &mut [f32]) {
            dequantize::<S, $format>(bytes, out)
        }

        #[inline(always)]
        pub(super) fn $dot<S: Simd>(bytes: &[u8], x: &[f32]) -> f32 {
            dot::<S, $format>(bytes, x)
        }
    )*};
}

row_kernels! {
    F32 => dequantize_f32, dot_f32;
    F16 => dequantize_f16, dot_f16;
    BF16 => dequantize_bf16, dot_bf16;
}
