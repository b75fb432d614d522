//! Integer dots of the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with 8-bit activations
//! ([`Q8Ref`]): ggml's `ggml_vec_dot_q4_0_q8_0` … `ggml_vec_dot_q8_0_q8_0` (`ggml-cpu/quants.c`
//! and `arch/x86/quants.c`), block layouts from `ggml-common.h`.
//!
//! Per block `b` of 32 elements, with weight quants `q_j`, activation quants `y_j` (`|y_j| ≤ 127`),
//! the weight scale `d` (and minimum `m` for Q4_1/Q5_1), the activation scale `d_a` and the
//! activation sum `S = Σ_j y_j` (two entries of `sum16`):
//! - Q4_0 / Q5_0 (`w = d·(q − 8)`, `d·(q − 16)`, `q` unsigned): `d·d_a·(Σ q_j y_j − 8·S)` (`16·S`);
//! - Q4_1 / Q5_1 (`w = d·q + m`): `d·d_a·Σ q_j y_j + m·d_a·S`;
//! - Q8_0 (`w = d·q`, `q` signed): `d·d_a·Σ q_j y_j`.
//!
//! Keeping the 4/5-bit quants unsigned (the offset goes through `S`) lets the x86 kernels feed
//! them straight into `vpmaddubsw` / `vpdpbusd` (unsigned × signed bytes), where ggml spends an
//! extra subtract, `vpsignb` and `vpabsb` per block. `Σ q_j y_j` is exact in i32, so every variant
//! computes the same integers; they differ only in the order of the f32 additions.
//!
//! Variants: [`portable`] (plain Rust, any target) and, on x86-64, `avx2` (`vpmaddubsw` +
//! `vpmaddwd`), `avx512vnni` (`vpdpbusd` on 256-bit vectors, AVX512-VNNI + AVX512-VL) and
//! `avxvnni` (the VEX `vpdpbusd`), in `legacy_q8_x86.rs`; the many-rows kernels also have a
//! 512-bit `avx512vnni_zmm` (two blocks per `zmm`, `legacy_q8_zmm.rs`). [`best`] picks the
//! fastest this CPU supports, detected once.
//!
//! Like the f32 row kernels, the dots never panic and never read out of bounds: they stop at the
//! last block that both `row` and every slice of `acts` hold in full.

use super::common::f16_at;
use super::q8::{DotQ8, DotQ8Gather, DotQ8Rows, Q8Ref, Q8_BLOCK};
use super::{DType, RowKernels};

#[cfg(target_arch = "x86_64")]
#[path = "legacy_q8_x86.rs"]
mod x86;

/// The fastest integer dot this CPU supports for `dtype`, or `None` when not a legacy format.
/// Cheap: the CPU features are detected on the first call only.
pub(super) fn best(dtype: DType) -> Option<DotQ8> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = x86::best(dtype) {
        return Some(dot);
    }
    portable(dtype)
}

/// The fastest many-rows kernel for `dtype`, where one is written (x86-64 with AVX2).
pub(super) fn best_rows(dtype: DType) -> Option<DotQ8Rows> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = x86::best_rows(dtype) {
        return Some(dot);
    }
    let _ = dtype;
    None
}

/// The fastest subset-of-rows kernel for `dtype`, where one is written (x86-64 with AVX2).
pub(super) fn best_gather(dtype: DType) -> Option<DotQ8Gather> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = x86::best_gather(dtype) {
        return Some(dot);
    }
    let _ = dtype;
    None
}

/// Every many-rows kernel this CPU can run for `dtype`, named. For tests.
pub(super) fn rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
    #[cfg(target_arch = "x86_64")]
    return x86::rows_variants(dtype);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        Vec::new()
    }
}

/// Every subset-of-rows kernel this CPU can run for `dtype`, named. For tests.
pub(super) fn gather_variants(dtype: DType) -> Vec<(&'static str, DotQ8Gather)> {
    #[cfg(target_arch = "x86_64")]
    return x86::gather_variants(dtype);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        Vec::new()
    }
}

/// Every variant this CPU can run for `dtype`, named, the portable one first; empty when `dtype`
/// is not a legacy format. For tests and benchmarks.
pub(super) fn variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
    #[allow(unused_mut)] // extended on x86-64 only
    let mut out: Vec<(&'static str, DotQ8)> = portable(dtype)
        .map(|d| ("portable", d))
        .into_iter()
        .collect();
    #[cfg(target_arch = "x86_64")]
    out.extend(x86::variants(dtype));
    out
}

impl RowKernels {
    /// Every integer-dot variant of a legacy `dtype` this CPU can run (see
    /// [`RowKernels::dot_q8`]), named, `"portable"` first; empty for other formats. For tests and
    /// benchmarks that check or time each one.
    pub fn legacy_q8_variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
        variants(dtype)
    }

    /// Every many-rows integer-dot kernel of a legacy `dtype` this CPU can run (see
    /// [`RowKernels::dot_q8_rows`]), named. For tests and benchmarks.
    pub fn legacy_q8_rows_variants(dtype: DType) -> Vec<(&'static str, DotQ8Rows)> {
        rows_variants(dtype)
    }

    /// Every subset-of-rows integer-dot kernel of a legacy `dtype` this CPU can run (see
    /// [`RowKernels::dot_q8_gather`]), named. For tests and benchmarks.
    pub fn legacy_q8_gather_variants(dtype: DType) -> Vec<(&'static str, DotQ8Gather)> {
        gather_variants(dtype)
    }
}

/// The plain-Rust dots (no run-time detection), for any target.
pub(super) fn portable(dtype: DType) -> Option<DotQ8> {
    Some(match dtype {
        DType::Q4_0 => dot_blocks::<Q40>,
        DType::Q4_1 => dot_blocks::<Q41>,
        DType::Q5_0 => dot_blocks::<Q50>,
        DType::Q5_1 => dot_blocks::<Q51>,
        DType::Q8_0 => dot_blocks::<Q80>,
        _ => return None,
    })
}

/// Whole blocks that `bytes` (blocks of `block_bytes`) and every slice of `acts` hold.
#[inline(always)]
pub(super) fn whole_blocks(block_bytes: usize, bytes: &[u8], acts: Q8Ref<'_>) -> usize {
    (bytes.len() / block_bytes)
        .min(acts.qs.len() / Q8_BLOCK)
        .min(acts.d.len())
        .min(acts.sum16.len() / 2)
}

/// One legacy format, decoded to integer quants for the portable dot.
trait Block {
    /// Bytes per block.
    const BYTES: usize;
    /// `w = d·(q − OFFSET)` for the formats without a minimum (0 for Q8_0 and the `_1` formats).
    const OFFSET: i32;
    /// `(d, m)`; `m` is 0 for the formats without a minimum.
    fn scales(b: &[u8]) -> (f32, f32);
    /// The 32 quants `q_j` in element order (unsigned 0..=31, or signed for Q8_0), as i16 so
    /// that `q·y` (|q·y| ≤ 128·128) is an i16 product LLVM can vectorize (`pmaddwd`, `smlal`).
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK];
}

/// Low nibbles are elements 0..16, high nibbles 16..32 (`block_q4_0`, `block_q4_1`).
#[inline(always)]
fn nibbles(qs: &[u8]) -> [i16; Q8_BLOCK] {
    let mut q = [0i16; Q8_BLOCK];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) as i16;
        q[j + 16] = (qs[j] >> 4) as i16;
    }
    q
}

/// Nibbles plus the fifth bits: bit `j` of the little-endian `qh` belongs to element `j`.
#[inline(always)]
fn nibbles_5bit(qh: &[u8], qs: &[u8]) -> [i16; Q8_BLOCK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = nibbles(qs);
    for (j, q) in q.iter_mut().enumerate() {
        *q |= (((qh >> j) & 1) << 4) as i16;
    }
    q
}

/// `block_q4_0 { d: f16, qs: [u8; 16] }`: `d·(q − 8)`.
struct Q40;
impl Block for Q40 {
    const BYTES: usize = 18;
    const OFFSET: i32 = 8;
    fn scales(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 0), 0.0)
    }
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK] {
        nibbles(&b[2..18])
    }
}

/// `block_q4_1 { d: f16, m: f16, qs: [u8; 16] }`: `d·q + m`.
struct Q41;
impl Block for Q41 {
    const BYTES: usize = 20;
    const OFFSET: i32 = 0;
    fn scales(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 0), f16_at(b, 2))
    }
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK] {
        nibbles(&b[4..20])
    }
}

/// `block_q5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] }`: `d·(q − 16)`.
struct Q50;
impl Block for Q50 {
    const BYTES: usize = 22;
    const OFFSET: i32 = 16;
    fn scales(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 0), 0.0)
    }
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK] {
        nibbles_5bit(&b[2..6], &b[6..22])
    }
}

/// `block_q5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }`: `d·q + m`.
struct Q51;
impl Block for Q51 {
    const BYTES: usize = 24;
    const OFFSET: i32 = 0;
    fn scales(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 0), f16_at(b, 2))
    }
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK] {
        nibbles_5bit(&b[4..8], &b[8..24])
    }
}

/// `block_q8_0 { d: f16, qs: [i8; 32] }`: `d·q`.
struct Q80;
impl Block for Q80 {
    const BYTES: usize = 34;
    const OFFSET: i32 = 0;
    fn scales(b: &[u8]) -> (f32, f32) {
        (f16_at(b, 0), 0.0)
    }
    fn quants(b: &[u8]) -> [i16; Q8_BLOCK] {
        std::array::from_fn(|j| b[2 + j] as i8 as i16)
    }
}

/// The portable dot: one exact i32 sum per block, then `d·d_a·(Σ q y − OFFSET·S) + m·d_a·S`.
fn dot_blocks<F: Block>(row: &[u8], acts: Q8Ref<'_>) -> f32 {
    let nb = whole_blocks(F::BYTES, row, acts);
    let mut acc = 0f32;
    for b in 0..nb {
        let block = &row[b * F::BYTES..(b + 1) * F::BYTES];
        let y = &acts.qs[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
        let q = F::quants(block);
        let qy: i32 = q.iter().zip(y).map(|(&q, &y)| (q * y as i16) as i32).sum();
        let s = acts.sum16[2 * b] as i32 + acts.sum16[2 * b + 1] as i32;
        let (d, m) = F::scales(block);
        let da = acts.d[b];
        acc += d * da * (qy - F::OFFSET * s) as f32 + m * da * s as f32;
    }
    acc
}
