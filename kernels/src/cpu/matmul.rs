//! Matrix-vector and matrix-matrix products over quantized weights, `out = x · Wᵀ` as in
//! PyTorch's `Linear` (W is `(rows, cols)`, x is `(n_tokens, cols)`).
//!
//! One token: each row is dotted with the activation straight from its blocks (no dequantized
//! copy). Several tokens (prefill): each row is dequantized once into a per-task f32 buffer and
//! reused for every token, so the block decoding cost is paid once per matrix, not per token.

use rayon::prelude::*;

use crate::quant::RowKernels;
use crate::{KernelError, MatRef, Result};

/// Rows per parallel task: enough work to amortise scheduling, enough tasks to balance 2+ cores.
const ROWS_PER_TASK: usize = 32;

/// `out[r] = W[r] · x` for every row.
pub fn matvec(w: MatRef<'_>, x: &[f32], out: &mut [f32]) -> Result<()> {
    check(&w, x.len(), out.len(), 1, "matvec")?;
    let k = RowKernels::for_dtype(w.dtype);
    out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, chunk)| {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = (k.dot)(w.row(c * ROWS_PER_TASK + i), x);
        }
    });
    Ok(())
}

/// `out[t][r] = W[r] · x[t]` for `n_tokens` activation rows; `x` is `(n_tokens, cols)`, `out` is
/// `(n_tokens, rows)`.
pub fn matmul(w: MatRef<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    if n_tokens == 1 {
        return matvec(w, x, out);
    }
    check(&w, x.len(), out.len(), n_tokens, "matmul")?;
    let k = RowKernels::for_dtype(w.dtype);
    let cols = w.cols;
    // Computed transposed, (rows, n_tokens), so that each task owns a contiguous slice.
    let mut out_t = vec![0.0f32; w.rows * n_tokens];
    out_t.par_chunks_mut(ROWS_PER_TASK * n_tokens).enumerate().for_each(|(c, chunk)| {
        let mut row = vec![0.0f32; cols];
        for (i, o) in chunk.chunks_mut(n_tokens).enumerate() {
            (k.dequantize)(w.row(c * ROWS_PER_TASK + i), &mut row);
            for (t, ot) in o.iter_mut().enumerate() {
                *ot = dot_f32(&row, &x[t * cols..(t + 1) * cols]);
            }
        }
    });
    for r in 0..w.rows {
        for t in 0..n_tokens {
            out[t * w.rows + r] = out_t[r * n_tokens + t];
        }
    }
    Ok(())
}

fn check(w: &MatRef<'_>, x_len: usize, out_len: usize, n_tokens: usize, op: &'static str) -> Result<()> {
    if x_len != n_tokens * w.cols || out_len != n_tokens * w.rows {
        return Err(KernelError::Shape {
            op,
            expected: format!("x {}x{}, out {}x{}", n_tokens, w.cols, n_tokens, w.rows),
            got: format!("x {x_len} elements, out {out_len} elements"),
        });
    }
    Ok(())
}

/// Dot product of two f32 slices of equal length, SIMD chosen at run time.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_body(a, b)
}

#[inline(always)]
fn dot_f32_body(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += xa[l] * xb[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}
