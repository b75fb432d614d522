//! Sparse products of the FFN, for a token whose active neurons (or input columns) are known:
//! PowerInfer's sparse operators (Song et al. 2023, `ggml_mul_mat_sparse` / `ggml_axpy`), Deja
//! Vu's row-subset products (Liu et al. 2023), TEAL's column skipping (Liu et al. 2024).
//!
//! - [`matvec_rows`]: `out[k] = W[rows[k]] · x` for a subset of W's rows (gate and up of the
//!   active neurons), read straight from the model's own format.
//! - [`axpy_rows`]: `out = Σ_k coef[k] · C[idx[k]]` over rows of a [`ColumnMajor`] matrix, the
//!   transposed copy of a weight in which one input column (one neuron of `down`, or one input
//!   channel of gate/up) is one contiguous row: skipping a zero input skips one read.
//!
//! The transposed copy is 8-bit (blocks of 32 with an f32 scale): the k-quants' super-blocks
//! run along the other axis and cannot be transposed as they are; 8 bits add an error far below
//! theirs. The legacy formats move into columns without requantizing (`super::columns`).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
#[path = "sparse_x86.rs"]
mod x86;

use super::matmul::{needs_q8, Input};
use crate::quant::q8::Q8_BLOCK;
use crate::quant::{prefetch_lines, RowKernels};
use crate::{KernelError, MatRef, Result};

/// W stored by input column: row `j` holds `W[:, j]` (the `n_outputs` weights input `j` feeds),
/// quantized to 8 bits in blocks of 32 along the outputs.
#[derive(Clone, Debug, Default)]
pub struct ColumnMajor {
    pub n_inputs: usize,  // W's columns: rows here
    pub n_outputs: usize, // W's rows
    padded: usize,        // n_outputs rounded up to 32
    q: Vec<i8>,           // (n_inputs, padded): W[o, j] ≈ scale[o] * d[j, o / 32] * q[j, o]
    d: Vec<f32>,          // (n_inputs, padded / 32)
    scale: Vec<f32>,      // (n_outputs): max_j |W[o, j]|, so every output uses the 8 bits fully
}

impl ColumnMajor {
    /// Transposes and requantizes `w` (`(n_outputs, n_inputs)`, any format).
    pub fn from_mat(w: MatRef<'_>) -> Result<ColumnMajor> {
        let order: Vec<u32> = (0..w.cols as u32).collect();
        Self::from_mat_ordered(w, &order)
    }

    /// As [`ColumnMajor::from_mat`], row `k` holding input column `order[k]` (a permutation of
    /// W's columns: e.g. the neurons hottest first, so the rows a token reads lie close).
    pub fn from_mat_ordered(w: MatRef<'_>, order: &[u32]) -> Result<ColumnMajor> {
        let (rows, cols) = (w.rows, w.cols);
        let mut seen = vec![false; cols];
        if order.len() != cols || order.iter().any(|&j| (j as usize) >= cols || std::mem::replace(&mut seen[j as usize], true)) {
            return Err(KernelError::Shape {
                op: "ColumnMajor::from_mat_ordered",
                expected: format!("a permutation of 0..{cols}"),
                got: format!("{} indices", order.len()),
            });
        }
        let padded = rows.next_multiple_of(Q8_BLOCK);
        let mut t = vec![0.0f32; cols * padded]; // (cols, padded): Wᵀ in f32
        let kernels = RowKernels::for_dtype(w.dtype);
        let mut row = vec![0.0f32; cols];
        let mut scale = vec![0.0f32; rows];
        for r in 0..rows {
            (kernels.dequantize)(w.row(r), &mut row);
            // Outputs differ in scale (a few carry outlier weights): normalized per output, the
            // blocks along the outputs quantize every output to its own range.
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            scale[r] = max;
            let inv = if max > 0.0 { 1.0 / max } else { 0.0 };
            for (k, &j) in order.iter().enumerate() {
                t[k * padded + r] = row[j as usize] * inv;
            }
        }
        let mut q = vec![0i8; cols * padded];
        let mut d = vec![0.0f32; cols * padded / Q8_BLOCK];
        for ((block, qb), db) in t.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK)).zip(d.iter_mut()) {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            *db = max / 127.0;
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            for (qv, v) in qb.iter_mut().zip(block) {
                *qv = (v * inv).round() as i8;
            }
        }
        Ok(ColumnMajor { n_inputs: cols, n_outputs: rows, padded, q, d, scale })
    }

    /// Bytes one input's row takes in a copy with `n_outputs` outputs: the 8-bit values and
    /// their block scales (what [`axpy_rows`] reads per index).
    pub fn bytes_per_input(n_outputs: usize) -> usize {
        let padded = n_outputs.next_multiple_of(Q8_BLOCK);
        padded + 4 * padded / Q8_BLOCK
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + (self.d.len() + self.scale.len()) * 4
    }

    /// Row `j` (input column `j` of W) dequantized into `out` (`n_outputs`), for tests.
    pub fn row_f32(&self, j: usize, out: &mut [f32]) {
        let (q, d) = self.row(j);
        for (o, v) in out.iter_mut().enumerate().take(self.n_outputs) {
            *v = self.scale[o] * d[o / Q8_BLOCK] * q[o] as f32;
        }
    }

    fn row(&self, j: usize) -> (&[i8], &[f32]) {
        let nb = self.padded / Q8_BLOCK;
        (&self.q[j * self.padded..(j + 1) * self.padded], &self.d[j * nb..(j + 1) * nb])
    }
}

/// Scratch of [`axpy_rows`]: one partial sum per task, kept by the caller so a decode step
/// allocates nothing.
#[derive(Default)]
pub struct AxpyScratch {
    partials: Vec<f32>, // (tasks, padded)
}

/// Fewest rows a task of [`axpy_rows`] takes: below that, forking costs more than it saves.
const AXPY_MIN_ROWS: usize = 64;

/// A body of [`axpy_rows`]: the same sums, with the instructions of a CPU level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxpyKernel {
    /// Any CPU.
    Portable,
    /// The portable body compiled for AVX2 + FMA.
    Avx2,
    /// Eight rows per pass in 512-bit registers (`sparse_x86.rs`).
    Avx512,
}

impl AxpyKernel {
    /// The kernels this CPU runs, slowest first (tests run each).
    pub fn detected() -> Vec<AxpyKernel> {
        let mut out = vec![AxpyKernel::Portable];
        if has_avx2() {
            out.push(AxpyKernel::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if x86::detected() {
            out.push(AxpyKernel::Avx512);
        }
        out
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> AxpyKernel {
        static BEST: std::sync::OnceLock<AxpyKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *AxpyKernel::detected().last().unwrap_or(&AxpyKernel::Portable))
    }

    fn run(self, m: &ColumnMajor, idx: &[u32], coef: &[f32], acc: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detected` lists this kernel only where AVX512-F is present; indices were
            // checked by `axpy_rows_with`, `acc` is one partial of `m.padded` values.
            AxpyKernel::Avx512 if x86::detected() => unsafe { x86::axpy(m, idx, coef, acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 and FMA.
            AxpyKernel::Avx2 if has_avx2() => unsafe { axpy_avx2(m, idx, coef, acc) },
            _ => axpy_body(m, idx, coef, acc),
        }
    }
}

/// `out = Σ_k coef[k] · m[idx[k]]` (`out` is `(m.n_outputs)`); indices must be `< m.n_inputs`.
pub fn axpy_rows(m: &ColumnMajor, idx: &[u32], coef: &[f32], out: &mut [f32], scratch: &mut AxpyScratch) -> Result<()> {
    axpy_rows_with(AxpyKernel::best(), m, idx, coef, out, scratch)
}

/// [`axpy_rows`] with a chosen body (a kernel the CPU lacks runs the portable one).
pub fn axpy_rows_with(kernel: AxpyKernel, m: &ColumnMajor, idx: &[u32], coef: &[f32], out: &mut [f32], scratch: &mut AxpyScratch) -> Result<()> {
    if idx.len() != coef.len() || out.len() != m.n_outputs || idx.iter().any(|&j| j as usize >= m.n_inputs) {
        return Err(KernelError::Shape {
            op: "axpy_rows",
            expected: format!("as many coefficients as indices, all indices < {}, out of {}", m.n_inputs, m.n_outputs),
            got: format!("{} indices, {} coefficients, out of {}", idx.len(), coef.len(), out.len()),
        });
    }
    let tasks = tasks_for(idx.len(), ColumnMajor::bytes_per_input(m.n_outputs), AXPY_MIN_ROWS);
    let per_task = idx.len().div_ceil(tasks).max(1);
    let p = m.padded;
    scratch.partials.clear();
    scratch.partials.resize(tasks * p, 0.0);
    scratch
        .partials
        .par_chunks_mut(p)
        .zip(idx.par_chunks(per_task).zip(coef.par_chunks(per_task)))
        .for_each(|(acc, (idx, coef))| kernel.run(m, idx, coef, acc));
    out.copy_from_slice(&scratch.partials[..m.n_outputs]);
    for part in scratch.partials.chunks_exact(p).skip(1) {
        super::ops::add_assign(out, &part[..m.n_outputs]);
    }
    out.iter_mut().zip(&m.scale).for_each(|(o, s)| *o *= s);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(m: &ColumnMajor, idx: &[u32], coef: &[f32], acc: &mut [f32]) {
    axpy_body(m, idx, coef, acc)
}

/// Four rows at a time, so each block of the accumulator is loaded and stored once per four.
#[inline(always)]
fn axpy_body(m: &ColumnMajor, idx: &[u32], coef: &[f32], acc: &mut [f32]) {
    let mut i4 = idx.chunks_exact(4);
    let mut c4 = coef.chunks_exact(4);
    for (n, (ix, cs)) in (&mut i4).zip(&mut c4).enumerate() {
        for &ahead in idx.get((n + 1) * 4..(n + 2) * 4).unwrap_or(&[]) {
            prefetch_i8(m.row(ahead as usize).0);
        }
        let rows = [m.row(ix[0] as usize), m.row(ix[1] as usize), m.row(ix[2] as usize), m.row(ix[3] as usize)];
        for (b, a) in acc.chunks_exact_mut(Q8_BLOCK).enumerate() {
            let s = [cs[0] * rows[0].1[b], cs[1] * rows[1].1[b], cs[2] * rows[2].1[b], cs[3] * rows[3].1[b]];
            let q = [&rows[0].0[b * 32..][..32], &rows[1].0[b * 32..][..32], &rows[2].0[b * 32..][..32], &rows[3].0[b * 32..][..32]];
            for l in 0..Q8_BLOCK {
                a[l] += s[0] * q[0][l] as f32 + s[1] * q[1][l] as f32 + s[2] * q[2][l] as f32 + s[3] * q[3][l] as f32;
            }
        }
    }
    for (&j, &c) in i4.remainder().iter().zip(c4.remainder()) {
        let (q, d) = m.row(j as usize);
        for ((a, qb), db) in acc.chunks_exact_mut(Q8_BLOCK).zip(q.chunks_exact(Q8_BLOCK)).zip(d) {
            let s = c * db;
            for l in 0..Q8_BLOCK {
                a[l] += s * qb[l] as f32;
            }
        }
    }
}

/// Rows of a subset fetched ahead of their dot: a subset's rows are scattered, so the hardware
/// prefetcher does not see them coming.
const PREFETCH_AHEAD: usize = 4;

#[inline(always)]
fn prefetch(row: &[u8]) {
    prefetch_lines(row.as_ptr(), row.len());
}

#[inline(always)]
fn prefetch_i8(row: &[i8]) {
    prefetch_lines(row.as_ptr().cast(), row.len());
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One weight of a row-subset group and its output: `out[k] = w.row(rows[k]) · x`.
pub struct RowsProduct<'a> {
    pub w: MatRef<'a>,
    pub out: &'a mut [f32], // (rows.len())
}

/// Fewest rows per task of [`matvec_rows`]: a task's kernel prefetches rows ahead only within
/// its own list, so short tasks would start cold too often.
const MIN_ROWS_PER_TASK: usize = 64;

/// Fewest weight bytes a task of [`matvec_rows`] or [`axpy_rows`] reads. A decode step runs
/// dozens of parallel regions, and each wakes the pool's sleeping threads: on the synthetic
/// small ReLU model (about 0.5 MB of rows per product and layer) splitting made the sparse FFN
/// slower on two threads than on one (1.03–1.11 against 0.74–0.82 ms per token).
const MIN_TASK_BYTES: usize = 1 << 20;

/// Tasks for `rows` rows of `row_bytes` bytes: two per thread, fewer when each would read
/// under [`MIN_TASK_BYTES`] or hold under `min_rows` rows; at least one.
fn tasks_for(rows: usize, row_bytes: usize, min_rows: usize) -> usize {
    let by_bytes = rows.saturating_mul(row_bytes) / MIN_TASK_BYTES;
    (rayon::current_num_threads() * 2).min(by_bytes).min(rows / min_rows.max(1)).max(1)
}

/// The products of a group (gate and up) for the same subset of rows, one token (`input.n_tokens
/// == 1`; `input.q8` as for [`super::matmul_group`]), in one parallel region.
pub fn matvec_rows(group: &mut [RowsProduct<'_>], rows: &[u32], input: Input<'_>) -> Result<()> {
    for p in group.iter() {
        let bad_q8 = needs_q8(&p.w) && input.q8.is_some_and(|q| q.len() != p.w.cols);
        if input.n_tokens != 1 || input.x.len() != p.w.cols || p.out.len() != rows.len() || bad_q8
            || rows.iter().any(|&r| r as usize >= p.w.rows)
        {
            return Err(KernelError::Shape {
                op: "matvec_rows",
                expected: format!("one token of {} inputs, {} outputs, rows < {}", p.w.cols, rows.len(), p.w.rows),
                got: format!("{} tokens, x of {}, out of {}", input.n_tokens, input.x.len(), p.out.len()),
            });
        }
    }
    for p in group.iter_mut() {
        let w = p.w;
        let q8 = input.q8.filter(|_| needs_q8(&w)).zip(RowKernels::dot_q8(w.dtype));
        let gather = RowKernels::dot_q8_gather(w.dtype);
        let kernels = RowKernels::for_dtype(w.dtype);
        let per_task = rows.len().div_ceil(tasks_for(rows.len(), w.row_bytes(), MIN_ROWS_PER_TASK)).max(1);
        p.out.par_chunks_mut(per_task).zip(rows.par_chunks(per_task)).for_each(|(out, rows)| match (q8, gather) {
            (Some((acts, _)), Some(gather)) => gather(w.data, w.row_bytes(), rows, acts.as_ref(), out),
            (Some((acts, dot)), None) => {
                for (k, (o, &r)) in out.iter_mut().zip(rows).enumerate() {
                    if let Some(&ahead) = rows.get(k + PREFETCH_AHEAD) {
                        prefetch(w.row(ahead as usize));
                    }
                    *o = dot(w.row(r as usize), acts.as_ref());
                }
            }
            (None, _) => {
                for (o, &r) in out.iter_mut().zip(rows) {
                    *o = (kernels.dot)(w.row(r as usize), input.x);
                }
            }
        });
    }
    Ok(())
}
