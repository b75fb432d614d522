//! The weight products: `matmul` (one token: `matvec.wgsl`, a workgroup reduction per row;
//! several: `matmul.wgsl`, tiles dequantized into workgroup memory), `matvec_rows` and
//! `axpy_rows` (the sparse FFN's subset-of-rows products). Each wrapper checks shapes, then
//! dispatches once per piece of the matrix (see `device.rs`: a matrix larger than one storage
//! binding is held as pieces of whole rows).

use super::device::{device_err, handle, params, Dispatch, Gpu, Groups};
use super::pipelines::Kernel;
use crate::backend::{DeviceBuffer, DeviceMat};
use crate::{KernelError, Result};

/// Threads per workgroup of the matvec kernels.
const MATVEC_THREADS: usize = 256;

/// Lanes per row of the matvec kernels for rows of `cols` elements (units of 32): enough that
/// few idle on short rows, at most 64.
fn matvec_lanes(cols: usize) -> usize {
    cols.div_ceil(32).next_power_of_two().clamp(16, 64)
}
/// Rows and tokens per workgroup of the matmul kernel.
const TILE_ROWS: usize = 128;
const TILE_TOKENS: usize = 64;
/// Columns per workgroup of the axpy kernel.
const AXPY_COLS: usize = 256;

/// One piece of a weight matrix, ready to bind.
struct WeightPiece<'a> {
    binding: wgpu::BufferBinding<'a>,
    row0: usize,
    rows: usize,
}

/// The matrix's pieces and its row bytes, after checking that the buffer holds `rows` rows.
fn weights<'a>(g: &Gpu, op: &'static str, w: &'a DeviceMat) -> Result<(Vec<WeightPiece<'a>>, usize)> {
    let row_bytes = w.dtype.row_bytes(w.cols)?;
    let need = row_bytes.checked_mul(w.rows).ok_or(KernelError::Overflow { what: "matrix bytes" })?;
    if w.buf.bytes() != need {
        return Err(KernelError::Shape {
            op,
            expected: format!("{}x{} {} = {need} bytes", w.rows, w.cols, w.dtype),
            got: format!("{} bytes", w.buf.bytes()),
        });
    }
    let pieces = &handle(&w.buf, op)?.pieces;
    let single = pieces.len() == 1;
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        let (row0, rows) = if single { (0, w.rows) } else { (p.row0, p.rows) };
        if p.buffer.size() as usize > g.max_binding || rows * row_bytes > p.len {
            return Err(device_err(op, "matrix piece too large to bind; upload it with upload_mat"));
        }
        out.push(WeightPiece { binding: p.buffer.as_entire_buffer_binding(), row0, rows });
    }
    Ok((out, row_bytes))
}

fn check_u32(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| device_err(op, format!("{what} = {n} does not fit the kernels' 32-bit indices")))
}

/// `out = x · Wᵀ`: `x` is `(n_tokens, w.cols)`, `out` `(n_tokens, w.rows)`.
pub(super) fn call_matmul(g: &Gpu, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
    let op = "matmul";
    let (pieces, row_bytes) = weights(g, op, w)?;
    let xb = g.bind(op, "x", x, n_tokens * w.cols * 4)?;
    let ob = g.bind(op, "out", out, n_tokens * w.rows * 4)?;
    if n_tokens == 0 || w.rows == 0 {
        return Ok(());
    }
    let (cols, rb, total) = (check_u32(op, "cols", w.cols)?, row_bytes as u32, check_u32(op, "rows", w.rows)?);
    let tokens = check_u32(op, "n_tokens", n_tokens)?;
    let dispatches: Vec<Dispatch<'_>> = pieces
        .into_iter()
        .map(|p| {
            let bindings = vec![p.binding, xb.clone(), ob.clone()];
            let (rows, row0) = (p.rows as u32, p.row0 as u32);
            if n_tokens == 1 {
                let lanes = matvec_lanes(w.cols);
                Dispatch {
                    kernel: Kernel::Matvec(w.dtype, lanes as u32),
                    params: params(&[rows, cols, rb, row0, cols.div_ceil(32)]),
                    bindings,
                    groups: Groups::Linear(p.rows.div_ceil(MATVEC_THREADS / lanes) as u32),
                }
            } else {
                Dispatch {
                    kernel: Kernel::Matmul(w.dtype),
                    params: params(&[rows, cols, rb, row0, tokens, total]),
                    bindings,
                    groups: Groups::Grid(p.rows.div_ceil(TILE_ROWS) as u32, n_tokens.div_ceil(TILE_TOKENS) as u32),
                }
            }
        })
        .collect();
    g.run(op, &dispatches)
}

/// `out[k] = W[rows[k]] · x` for `k < n_rows`. A row index out of range is reported by the next
/// `read` or `synchronize` (the indices live on the device).
pub(super) fn call_matvec_rows(g: &Gpu, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "matvec_rows";
    let (pieces, row_bytes) = weights(g, op, w)?;
    let lb = g.bind(op, "rows", rows, n_rows * 4)?;
    let xb = g.bind(op, "x", x, w.cols * 4)?;
    let ob = g.bind(op, "out", out, n_rows * 4)?;
    if n_rows == 0 {
        return Ok(());
    }
    let (cols, rb, total) = (check_u32(op, "cols", w.cols)?, row_bytes as u32, check_u32(op, "rows", w.rows)?);
    let list = check_u32(op, "n_rows", n_rows)?;
    let lanes = matvec_lanes(w.cols);
    let dispatches: Vec<Dispatch<'_>> = pieces
        .into_iter()
        .map(|p| Dispatch {
            kernel: Kernel::MatvecRows(w.dtype, lanes as u32),
            params: params(&[p.rows as u32, cols, rb, p.row0 as u32, cols.div_ceil(32), list, total]),
            bindings: vec![p.binding, xb.clone(), ob.clone(), lb.clone(), g.status_binding()],
            groups: Groups::Linear(n_rows.div_ceil(MATVEC_THREADS / lanes) as u32),
        })
        .collect();
    g.run(op, &dispatches)
}

/// `out[c] = Σ_k coef[k] · W[rows[k]][c]` (`out` is `(w.cols)`, overwritten). A row index out of
/// range is reported by the next `read` or `synchronize`.
pub(super) fn call_axpy_rows(g: &Gpu, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "axpy_rows";
    let (pieces, row_bytes) = weights(g, op, w)?;
    let lb = g.bind(op, "rows", rows, n_rows * 4)?;
    let cb = g.bind(op, "coef", coef, n_rows * 4)?;
    let ob = g.bind(op, "out", out, w.cols * 4)?;
    if w.cols == 0 {
        return Ok(());
    }
    let (cols, rb, total) = (check_u32(op, "cols", w.cols)?, row_bytes as u32, check_u32(op, "rows", w.rows)?);
    let list = check_u32(op, "n_rows", n_rows)?;
    let dispatches: Vec<Dispatch<'_>> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| Dispatch {
            kernel: Kernel::AxpyRows(w.dtype),
            params: params(&[p.rows as u32, cols, rb, p.row0 as u32, list, total, (i > 0) as u32]),
            bindings: vec![p.binding, lb.clone(), cb.clone(), ob.clone(), g.status_binding()],
            groups: Groups::Linear(w.cols.div_ceil(AXPY_COLS) as u32),
        })
        .collect();
    g.run(op, &dispatches)
}
