//! The table from format to row kernels, written once and instantiated twice: a portable build
//! (baseline SSE2 on x86-64, NEON with FMA on aarch64) and, on x86-64 only, an `avx2,fma,f16c`
//! build chosen at run time with `is_x86_feature_detected!` (cached by std, so the choice is
//! cheap).
//!
//! The same pattern as ggml's CPU backend choosing `ggml_vec_dot_*` variants, without
//! compile-time `target-cpu` flags: the generic `#[inline(always)]` bodies in the format files are
//! compiled a second time inside `#[target_feature(enable = "avx2,fma,f16c")]` functions.

use super::simd::Portable;
use super::{float, kquants, legacy, DType, RowKernels};

macro_rules! row_kernel_table {
    ($($dtype:ident => $family:ident :: $dequantize:ident, $dot:ident;)*) => {
        /// The kernels built for the compile target's baseline features.
        pub(super) fn portable(dtype: DType) -> RowKernels {
            match dtype {
                $(DType::$dtype => RowKernels {
                    dtype,
                    dequantize: |b, out| $family::$dequantize::<Portable>(b, out),
                    dot: |b, x| $family::$dot::<Portable>(b, x),
                },)*
            }
        }

        /// The kernels built for AVX2, FMA and F16C, or `None` when this CPU lacks one of them.
        #[cfg(target_arch = "x86_64")]
        pub(super) fn avx2_fma(dtype: DType) -> Option<RowKernels> {
            use super::x86::Avx2;
            use std::arch::is_x86_feature_detected as has;
            if !(has!("avx2") && has!("fma") && has!("f16c")) {
                return None;
            }
            Some(match dtype {
                $(DType::$dtype => {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn dequantize(b: &[u8], out: &mut [f32]) {
                        $family::$dequantize::<Avx2>(b, out)
                    }
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn dot(b: &[u8], x: &[f32]) -> f32 {
                        $family::$dot::<Avx2>(b, x)
                    }
                    RowKernels {
                        dtype,
                        // SAFETY: these closures exist only once AVX2, FMA and F16C were detected
                        // above.
                        dequantize: |b, out| unsafe { dequantize(b, out) },
                        dot: |b, x| unsafe { dot(b, x) },
                    }
                })*
            })
        }
    };
}

row_kernel_table! {
    F32 => float::dequantize_f32, dot_f32;
    F16 => float::dequantize_f16, dot_f16;
    BF16 => float::dequantize_bf16, dot_bf16;
    Q4_0 => legacy::dequantize_q4_0, dot_q4_0;
    Q4_1 => legacy::dequantize_q4_1, dot_q4_1;
    Q5_0 => legacy::dequantize_q5_0, dot_q5_0;
    Q5_1 => legacy::dequantize_q5_1, dot_q5_1;
    Q8_0 => legacy::dequantize_q8_0, dot_q8_0;
    Q2_K => kquants::dequantize_q2_k, dot_q2_k;
    Q3_K => kquants::dequantize_q3_k, dot_q3_k;
    Q4_K => kquants::dequantize_q4_k, dot_q4_k;
    Q5_K => kquants::dequantize_q5_k, dot_q5_k;
    Q6_K => kquants::dequantize_q6_k, dot_q6_k;
}

/// The fastest kernels this CPU supports.
pub(super) fn best(dtype: DType) -> RowKernels {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernels) = avx2_fma(dtype) {
        return kernels;
    }
    portable(dtype)
}
