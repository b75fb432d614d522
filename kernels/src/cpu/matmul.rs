//! Matrix products over quantized weights, `out = x · Wᵀ` as in PyTorch's `Linear` (W is
//! `(rows, cols)`, x is `(n_tokens, cols)`, out is `(n_tokens, rows)`).
//!
//! Several products that read the same input (Q, K and V; gate and up) run as one parallel
//! region: their rows are cut into tasks of similar size and spread over the thread pool, so a
//! decode step pays one fork-join per group instead of one per matrix. Each weight row is read
//! once per call and dotted with every token's activation while it sits in L1:
//! - formats with an integer dot (`RowKernels::dot_q8`) read the input quantized once to 8 bits
//!   (as ggml's `vec_dot_*_q8_*`);
//! - the others dot f32 activations (one token) or dequantize the row once and reuse it (many).

use rayon::prelude::*;

use crate::quant::q8::{DotQ8, Q8Acts, Q8_BLOCK};
use crate::quant::unpacked::{self, can_unpack, unpack_rows, Unpacked};
use crate::quant::RowKernels;
use crate::{KernelError, MatRef, Result};

/// One product of a group: `out` is `(n_tokens, w.rows)`.
pub struct Product<'a> {
    pub w: MatRef<'a>,
    pub out: &'a mut [f32],
}

/// The input of a group: `x` is `(n_tokens, cols)`; `q8` its 8-bit quantization when any
/// product of the group has an integer dot (see [`needs_q8`]).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub x: &'a [f32],
    pub q8: Option<&'a Q8Acts>,
    pub n_tokens: usize,
}

/// Whether a product with this weight reads the input quantized to 8 bits.
pub fn needs_q8(w: &MatRef<'_>) -> bool {
    w.cols % Q8_BLOCK == 0 && RowKernels::dot_q8(w.dtype).is_some()
}

/// `out = x · Wᵀ` for one weight.
pub fn matmul(w: MatRef<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    let quantize = needs_q8(&w) && x.len() == n_tokens * w.cols;
    let mut q8 = Q8Acts::default();
    if quantize {
        crate::quant::q8::quantize_q8_rows(x, &mut q8);
    }
    let q8 = quantize.then_some(&q8);
    matmul_group(&mut [Product { w, out }], Input { x, q8, n_tokens })
}

/// `out = W · x` for one token.
pub fn matvec(w: MatRef<'_>, x: &[f32], out: &mut [f32]) -> Result<()> {
    matmul(w, x, 1, out)
}

/// Runs every product of the group in one parallel region.
pub fn matmul_group(products: &mut [Product<'_>], input: Input<'_>) -> Result<()> {
    let n = input.n_tokens;
    for p in products.iter() {
        check(&p.w, input.x.len(), p.out.len(), n)?;
        if let Some(q) = input.q8 {
            if needs_q8(&p.w) && q.len() != n * p.w.cols {
                return Err(KernelError::Shape {
                    op: "matmul_group",
                    expected: format!("8-bit input of {n}x{}", p.w.cols),
                    got: format!("{} elements", q.len()),
                });
            }
        }
    }
    let total_rows: usize = products.iter().map(|p| p.w.rows).sum();
    let target_tasks = rayon::current_num_threads() * 4;
    // A multiple of four rows: the many-rows kernels take rows four at a time.
    let chunk = total_rows.div_ceil(target_tasks).clamp(4, 512).next_multiple_of(4);
    let mut tasks = Vec::with_capacity(total_rows / chunk + products.len());
    for p in products.iter_mut() {
        let out = OutPtr(p.out.as_mut_ptr());
        for r0 in (0..p.w.rows).step_by(chunk) {
            tasks.push(Task { w: p.w, out, rows: r0..(r0 + chunk).min(p.w.rows) });
        }
    }
    tasks.par_iter().for_each_init(TaskScratch::default, |scratch, task| {
        // SAFETY: tasks cover disjoint row ranges of their product, and every write below goes
        // to `out[t * rows + r]` for a row `r` of this task only; `out` outlives the region.
        unsafe { run_task(task, input, scratch) }
    });
    Ok(())
}

/// Bytes of weight rows one tile of a many-token product holds (L1-sized: 32 KiB measured about 5%
/// faster than 16 KiB on Qwen2.5-0.5B's prefill with the 512-bit kernels).
const TILE_BYTES: usize = 32 * 1024;

/// Tokens from which a product unpacks each tile of 4/5/6-bit rows once (see
/// `quant::unpacked`) instead of unpacking every row's bits again for every token.
const UNPACK_MIN_TOKENS: usize = 4;

/// Per-thread buffers of a parallel region.
#[derive(Default)]
struct TaskScratch {
    row_f32: Vec<f32>,
    unpacked: Unpacked,
}

struct Task<'a> {
    w: MatRef<'a>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only written through at indices owned by one task (see matmul_group).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// # Safety
/// `task.out` must point to `(n_tokens, task.w.rows)` floats that no other task writes at the
/// rows of `task.rows`.
unsafe fn run_task(task: &Task<'_>, input: Input<'_>, scratch: &mut TaskScratch) {
    let (w, n, cols) = (task.w, input.n_tokens, task.w.cols);
    if let (Some(q8), Some(dot)) = (input.q8.filter(|_| needs_q8(&w)), RowKernels::dot_q8(w.dtype)) {
        if n >= UNPACK_MIN_TOKENS && can_unpack(w.dtype) {
            // SAFETY: forwarded to the caller.
            return unsafe { run_task_unpacked(task, q8, n, dot, &mut scratch.unpacked) };
        }
        // SAFETY: forwarded to the caller.
        return unsafe { run_task_q8(task, q8, n, dot) };
    }
    let row_f32 = &mut scratch.row_f32;
    let out = |t: usize, r: usize| task.out.0.add(t * w.rows + r);
    let kernels = RowKernels::for_dtype(w.dtype);
    if n == 1 {
        for r in task.rows.clone() {
            *out(0, r) = (kernels.dot)(w.row(r), input.x);
        }
        return;
    }
    row_f32.resize(cols, 0.0);
    for r in task.rows.clone() {
        (kernels.dequantize)(w.row(r), row_f32);
        for t in 0..n {
            *out(t, r) = dot_f32(row_f32, &input.x[t * cols..(t + 1) * cols]);
        }
    }
}

/// The many-token path of [`run_task`] for the 4/5/6-bit formats: each tile of rows is unpacked
/// once (bits to bytes, scales to floats), then every token's activations are dotted with it.
///
/// # Safety
/// As [`run_task`]; `q8` holds `n` rows of `task.w.cols` quantized activations.
unsafe fn run_task_unpacked(task: &Task<'_>, q8: &Q8Acts, n: usize, dot: DotQ8, unpacked: &mut Unpacked) {
    let w = task.w;
    let rb = w.row_bytes();
    // An unpacked row takes about 2.25 bytes per element: a byte, a 32nd of 8 floats, a 16th of
    // a float.
    let tile = (TILE_BYTES / (w.cols * 9 / 4).max(1)).max(4);
    for r0 in task.rows.clone().step_by(tile) {
        let r1 = (r0 + tile).min(task.rows.end);
        if !unpack_rows(w.dtype, &w.data[r0 * rb..r1 * rb], rb, w.cols, unpacked) {
            // Not reachable for a checked MatRef of an unpackable format; computed the usual way.
            let sub = Task { w, out: task.out, rows: r0..r1 };
            // SAFETY: forwarded to the caller.
            unsafe { run_task_q8(&sub, q8, n, dot) };
            continue;
        }
        // SAFETY: rows r0..r1 of token t belong to this task (see `run_task`).
        let out_t = |t: usize| unsafe { std::slice::from_raw_parts_mut(task.out.0.add(t * w.rows + r0), r1 - r0) };
        for t in (0..n).step_by(2) {
            match t + 1 < n {
                true => unpacked::dot_rows2(unpacked, [q8.row(t, w.cols), q8.row(t + 1, w.cols)], [out_t(t), out_t(t + 1)]),
                false => unpacked::dot_rows(unpacked, q8.row(t, w.cols), out_t(t)),
            }
        }
    }
}

/// The integer-dot path of [`run_task`]: tiles of rows small enough to stay in L1 while every
/// token's activations pass over them (one tile = the whole task for a single token), each tile
/// one many-rows kernel call per token where the format has one.
///
/// # Safety
/// As [`run_task`]; `q8` holds `n` rows of `task.w.cols` quantized activations.
unsafe fn run_task_q8(task: &Task<'_>, q8: &Q8Acts, n: usize, dot: DotQ8) {
    let w = task.w;
    let dot_rows = RowKernels::dot_q8_rows(w.dtype);
    let rb = w.row_bytes();
    let tile = if n == 1 { task.rows.len() } else { TILE_BYTES / rb.max(1) }.max(4);
    for r0 in task.rows.clone().step_by(tile) {
        let r1 = (r0 + tile).min(task.rows.end);
        let bytes = &w.data[r0 * rb..r1 * rb];
        for t in 0..n {
            // SAFETY: rows r0..r1 of token t belong to this task (see `run_task`).
            let out_t = unsafe { std::slice::from_raw_parts_mut(task.out.0.add(t * w.rows + r0), r1 - r0) };
            let acts = q8.row(t, w.cols);
            match dot_rows {
                Some(dot_rows) => dot_rows(bytes, rb, acts, out_t),
                None => {
                    for (o, row) in out_t.iter_mut().zip(bytes.chunks_exact(rb)) {
                        *o = dot(row, acts);
                    }
                }
            }
        }
    }
}

fn check(w: &MatRef<'_>, x_len: usize, out_len: usize, n_tokens: usize) -> Result<()> {
    if x_len != n_tokens * w.cols || out_len != n_tokens * w.rows {
        return Err(KernelError::Shape {
            op: "matmul",
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
