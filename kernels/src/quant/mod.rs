//! GGUF tensor formats: block layouts as defined by ggml (`ggml-common.h`, `ggml-quants.c`).
//!
//! Every format is a sequence of fixed-size blocks; a block holds `block_len()` elements in
//! `block_bytes()` bytes. For each format this module offers two row kernels, chosen once per
//! matrix through [`RowKernels::for_dtype`]:
//! - `dequantize(row_bytes, out)` — expand a whole number of blocks to f32;
//! - `dot(row_bytes, x)` — the dot product of a quantized row with an f32 vector.
//!
//! One file per family: `float.rs` (F32, F16, BF16), `legacy.rs` (Q4_0 … Q8_0), `kquants.rs`
//! (Q2_K … Q6_K); `simd.rs` holds the eight-lane accumulator they share (`x86.rs` its AVX2
//! version); `dispatch.rs` builds the table of kernels, with an AVX2+FMA+F16C copy chosen at run
//! time on x86-64. All `cfg(target_arch)` of the kernels lives in this module.

mod common;
mod dispatch;
mod float;
mod kquants;
mod legacy;
mod legacy_q8;
mod kquants_q8;
pub mod q8;
pub mod quantize;
pub mod unpacked;
#[cfg(target_arch = "x86_64")]
mod x86_level;
mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::{KernelError, Result};

/// A tensor element format. The discriminants are ggml's `ggml_type` ids, as stored in GGUF.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

/// Elements per super-block of the k-quant formats.
pub const QK_K: usize = 256;

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// The format with ggml type id `id`, or `None` when Ember does not support it.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u32 == id)
    }

    /// ggml's name for a type id, for error messages about formats Ember does not support.
    pub fn ggml_name(id: u32) -> &'static str {
        match id {
            9 => "Q8_1",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => DType::from_ggml_id(id).map(|d| d.name()).unwrap_or("unknown"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q2_K => "Q2_K",
            DType::Q3_K => "Q3_K",
            DType::Q4_K => "Q4_K",
            DType::Q5_K => "Q5_K",
            DType::Q6_K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => 32,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q2_K => 84,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// Bytes of a row of `n` elements; an error when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bl = self.block_len();
        if n % bl != 0 {
            return Err(KernelError::PartialBlock { dtype: self.name(), cols: n, block: bl });
        }
        (n / bl).checked_mul(self.block_bytes()).ok_or(KernelError::Overflow { what: "row bytes" })
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The row kernels of one format. Callers check shapes once (see [`crate::MatRef::new`]) and then
/// call these in their inner loops: `bytes.len()` must be `dtype.row_bytes(n)` for the `n`
/// elements of `out` / `x`. A mismatch is the caller's bug: the result is then meaningless, but
/// the kernels neither panic nor read out of bounds. `bytes` may be unaligned.
#[derive(Clone, Copy)]
pub struct RowKernels {
    pub dtype: DType,
    pub dequantize: fn(bytes: &[u8], out: &mut [f32]),
    pub dot: fn(bytes: &[u8], x: &[f32]) -> f32,
}

impl RowKernels {
    /// The fastest kernels this CPU supports for `dtype` (AVX2+FMA+F16C when detected on x86-64).
    /// Cheap: a table lookup plus std's cached feature check; call it once per matrix.
    pub fn for_dtype(dtype: DType) -> RowKernels {
        dispatch::best(dtype)
    }

    /// The integer dot of `dtype`'s rows with 8-bit activations ([`q8::Q8Acts`]), the fastest
    /// this CPU supports; `None` for formats computed in float (F32, F16, BF16).
    pub fn dot_q8(dtype: DType) -> Option<q8::DotQ8> {
        legacy_q8::best(dtype).or_else(|| kquants_q8::best(dtype))
    }

    /// The many-rows form of [`RowKernels::dot_q8`], where this CPU has one; callers fall back
    /// to calling `dot_q8` row by row.
    pub fn dot_q8_rows(dtype: DType) -> Option<q8::DotQ8Rows> {
        legacy_q8::best_rows(dtype).or_else(|| kquants_q8::best_rows(dtype))
    }

    /// The subset-of-rows form of [`RowKernels::dot_q8`] (legacy formats on x86-64 with AVX2);
    /// callers fall back to calling `dot_q8` row by row.
    pub fn dot_q8_gather(dtype: DType) -> Option<q8::DotQ8Gather> {
        legacy_q8::best_gather(dtype)
    }

    /// The kernels built for the compile target's baseline only, without run-time feature
    /// detection: what [`RowKernels::for_dtype`] falls back to. For tests and benchmarks that
    /// want to check or time both variants.
    pub fn portable(dtype: DType) -> RowKernels {
        dispatch::portable(dtype)
    }
}

/// Asks for the cache lines of the `len` bytes from `start` (x86-64; nothing elsewhere). A
/// prefetch reads nothing and never faults, so any address is fine: the weight kernels use it
/// to request rows ahead of the one they compute.
#[inline(always)]
pub fn prefetch_lines(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(64) {
        // SAFETY: a prefetch has no architectural effect and never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.wrapping_add(line).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// Dequantizes a row, checking its length first.
pub fn dequantize_row(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_row(dtype, bytes, out.len(), "dequantize_row")?;
    (RowKernels::for_dtype(dtype).dequantize)(bytes, out);
    Ok(())
}

/// The dot product of a quantized row with `x`, checking the row's length first.
pub fn dot_row(dtype: DType, bytes: &[u8], x: &[f32]) -> Result<f32> {
    check_row(dtype, bytes, x.len(), "dot_row")?;
    Ok((RowKernels::for_dtype(dtype).dot)(bytes, x))
}

fn check_row(dtype: DType, bytes: &[u8], n: usize, op: &'static str) -> Result<()> {
    let expected = dtype.row_bytes(n)?;
    if bytes.len() != expected {
        return Err(KernelError::Shape {
            op,
            expected: format!("{n} {dtype} elements = {expected} bytes"),
            got: format!("{} bytes", bytes.len()),
        });
    }
    Ok(())
}
