//! One `call_<op>` wrapper per kernel family (candle-kernels' layout): each checks the shapes
//! and buffer sizes against the [`Backend`](super::Backend) contract (the semantics of
//! `backend/cpu.rs`), then queues the launch. Grids over tokens are cut in chunks of 65,535 (the
//! limit of `gridDim.y`).

use cudarc::driver::{result as drv, LaunchConfig, PushKernelArg};

use super::{check_len, device_err, CudaBackend, Q8Scratch, Q8_RESIDENT_BLOCKS};
use crate::backend::{AttnShape, DeviceBuffer, DeviceMat, Elementwise, GluAct};
use crate::quant::DType;
use crate::{KernelError, Result};

/// Outputs per block of the product kernels (one warp each).
const ROWS_PER_BLOCK: u32 = 4;
/// Tokens per launch of a kernel with tokens on `gridDim.y`.
const MAX_GRID_Y: usize = 65_535;
/// Threads per block of the one-thread-per-element kernels.
const THREADS: u32 = 256;
/// Largest head the attention kernel holds.
const MAX_HEAD_DIM: usize = 256;

/// The kernel name suffix of a format, `None` where the backend has no kernels (Q2_K, Q3_K).
pub(crate) fn kernel_suffix(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::Q4_0 => "q4_0",
        DType::Q4_1 => "q4_1",
        DType::Q5_0 => "q5_0",
        DType::Q5_1 => "q5_1",
        DType::Q8_0 => "q8_0",
        DType::Q4_K => "q4_k",
        DType::Q5_K => "q5_k",
        DType::Q6_K => "q6_k",
        DType::Q2_K | DType::Q3_K => return None,
    })
}

/// A kernel name `prefix_suffix` as the `&'static str` the function table is keyed by.
fn kernel_name(prefix: &str, dtype: DType, op: &'static str) -> Result<&'static str> {
    let suffix = kernel_suffix(dtype).ok_or(KernelError::Unsupported { op, dtype: dtype.name() })?;
    super::SOURCES
        .iter()
        .flat_map(|s| s.kernels.iter())
        .find(|k| k.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) == Some(suffix))
        .copied()
        .ok_or(KernelError::Unsupported { op, dtype: dtype.name() })
}

fn to_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| KernelError::Shape { op, expected: format!("{what} < 2^32"), got: v.to_string() })
}

fn launch_err(op: &'static str, e: drv::DriverError) -> KernelError {
    device_err(op, format!("launch: {e:?}"))
}

fn config(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Checks that the matrix buffer holds `rows` rows of `cols` in its format; its row bytes.
fn check_mat(op: &'static str, w: &DeviceMat) -> Result<u64> {
    let row_bytes = w.dtype.row_bytes(w.cols)?;
    let need = row_bytes.checked_mul(w.rows).ok_or(KernelError::Overflow { what: "matrix bytes" })?;
    check_len(op, "weight matrix", &w.buf, need)?;
    to_u32(op, "rows", w.rows)?;
    to_u32(op, "columns", w.cols)?;
    Ok(row_bytes as u64)
}

/// `dst[dst_off..][..n] = src[src_off..][..n]` (f32 elements); overlapping ranges of one buffer
/// go through a temporary, as the CPU backend reads the source before writing.
pub(crate) fn call_copy(b: &CudaBackend, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()> {
    let op = "copy";
    check_len(op, "source", src, (src_off + n) * 4)?;
    check_len(op, "destination", dst, (dst_off + n) * 4)?;
    if n == 0 {
        return Ok(());
    }
    let (s, d) = (b.ptr(src, op)? + src_off as u64 * 4, b.ptr(dst, op)? + dst_off as u64 * 4);
    let bytes = n * 4;
    b.bind(op)?;
    let stream = b.stream().cu_stream();
    let overlap = s < d + bytes as u64 && d < s + bytes as u64;
    let map = |e| device_err(op, format!("{e:?}"));
    if overlap && s != d {
        let tmp = b.raw_alloc(bytes, op)?;
        // SAFETY: both ranges are in bounds (checked) and queued on one stream; `tmp` is freed
        // on that stream after the copies.
        unsafe {
            drv::memcpy_dtod_async(tmp.ptr, s, bytes, stream).map_err(map)?;
            drv::memcpy_dtod_async(d, tmp.ptr, bytes, stream).map_err(map)?;
        }
    } else if s != d {
        // SAFETY: disjoint, in-bounds ranges, queued on the stream.
        unsafe { drv::memcpy_dtod_async(d, s, bytes, stream) }.map_err(map)?;
    }
    Ok(())
}

/// `out = x · Wᵀ`.
pub(crate) fn call_matmul(b: &CudaBackend, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
    let op = "matmul";
    check_mat(op, w)?;
    check_len(op, "x", x, n_tokens * w.cols * 4)?;
    check_len(op, "out", out, n_tokens * w.rows * 4)?;
    product(b, op, w, None, w.rows, x, n_tokens, out)
}

/// `out[k] = W[rows[k]] · x`; an index past the matrix gives 0 and makes the next wait
/// (`synchronize`, `read`) fail with a shape error: the indices live on the device.
pub(crate) fn call_matvec_rows(b: &CudaBackend, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "matvec_rows";
    check_mat(op, w)?;
    check_len(op, "rows", rows, n_rows * 4)?;
    check_len(op, "x", x, w.cols * 4)?;
    check_len(op, "out", out, n_rows * 4)?;
    product(b, op, w, Some(rows), n_rows, x, 1, out)
}

/// The products: float formats straight from `x`, quantized ones after quantizing `x` to 8-bit
/// blocks in the scratch (held locked until both launches are queued).
#[allow(clippy::too_many_arguments)]
fn product(b: &CudaBackend, op: &'static str, w: &DeviceMat, rows: Option<&DeviceBuffer>, n_out: usize, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
    let row_bytes = check_mat(op, w)?;
    if n_out == 0 || n_tokens == 0 {
        return Ok(());
    }
    let n_out32 = to_u32(op, "outputs", n_out)?;
    let n_w_rows = w.rows as u32;
    let cols = w.cols as u32;
    let (wp, xp, op_out) = (b.ptr(&w.buf, op)?, b.ptr(x, op)?, b.ptr(out, op)?);
    let (rows_p, status) = match rows {
        Some(r) => (b.ptr(r, op)?, b.status_for_rows()),
        None => (0u64, b.status_ptr()),
    };
    let grid_x = n_out32.div_ceil(ROWS_PER_BLOCK);
    let n_tok32 = to_u32(op, "tokens", n_tokens)?;
    // Eight tokens per warp when there are several: each weight is read once for eight.
    let (nt, wide) = if n_tokens > 1 { (8usize, "8") } else { (1, "") };
    let chunk = MAX_GRID_Y * nt;
    if !w.dtype.is_quantized() {
        let f = b.func(kernel_name(&format!("mmv{wide}"), w.dtype, op)?)?;
        for t0 in (0..n_tokens).step_by(chunk) {
            let (t0, grid_y) = (t0 as u32, (n_tokens - t0).min(chunk).div_ceil(nt) as u32);
            let mut l = b.stream().launch_builder(f);
            l.arg(&wp).arg(&row_bytes).arg(&rows_p).arg(&n_out32).arg(&n_w_rows).arg(&xp).arg(&cols).arg(&op_out).arg(&t0).arg(&n_tok32).arg(&status);
            // SAFETY: sizes checked above; the kernel reads `n_out` outputs of tokens < n_tokens.
            unsafe { l.launch(config((grid_x, grid_y), ROWS_PER_BLOCK * 32)) }.map_err(|e| launch_err(op, e))?;
        }
        return Ok(());
    }
    let f = b.func(kernel_name(&format!("mmvq{wide}"), w.dtype, op)?)?;
    let blocks = cols / 32;
    let n_blocks = to_u32(op, "activation blocks", n_tokens * blocks as usize)?;
    let guard = b.q8_scratch().lock().map_err(|_| device_err(op, "scratch lock poisoned"))?;
    // A product larger than the resident scratch gets one of its own, freed (on the stream,
    // after these kernels) when this call returns.
    let own = if n_blocks as usize > Q8_RESIDENT_BLOCKS {
        Some(Q8Scratch { qs: b.raw_alloc(n_blocks as usize * 32, op)?, d: b.raw_alloc(n_blocks as usize * 4, op)? })
    } else {
        None
    };
    let scratch = own.as_ref().unwrap_or(&guard);
    let (qs, d) = (scratch.qs.ptr, scratch.d.ptr);
    if n_blocks > 0 {
        call_quantize(b, xp, qs, d, n_blocks, op)?;
    }
    for t0 in (0..n_tokens).step_by(chunk) {
        let (t0, grid_y) = (t0 as u32, (n_tokens - t0).min(chunk).div_ceil(nt) as u32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&wp).arg(&row_bytes).arg(&rows_p).arg(&n_out32).arg(&n_w_rows).arg(&qs).arg(&d).arg(&blocks).arg(&op_out).arg(&t0).arg(&n_tok32).arg(&status);
        // SAFETY: sizes checked above; the scratch holds `n_tokens * blocks` activation blocks.
        unsafe { l.launch(config((grid_x, grid_y), ROWS_PER_BLOCK * 32)) }.map_err(|e| launch_err(op, e))?;
    }
    Ok(())
}

/// Quantizes `n_blocks` blocks of 32 f32s at `x` into `qs` (i8) and `d` (f32 scales).
fn call_quantize(b: &CudaBackend, x: u64, qs: u64, d: u64, n_blocks: u32, op: &'static str) -> Result<()> {
    let f = b.func("quantize_q8")?;
    let warps = THREADS / 32;
    let mut l = b.stream().launch_builder(f);
    l.arg(&x).arg(&qs).arg(&d).arg(&n_blocks);
    // SAFETY: `x` holds `n_blocks * 32` f32s, the scratch as many bytes and `n_blocks` scales.
    unsafe { l.launch(config((n_blocks.div_ceil(warps), 1), THREADS)) }.map_err(|e| launch_err(op, e))?;
    Ok(())
}

/// `out[c] = Σ_k coef[k] · W[rows[k]][c]` (rows past the matrix are skipped, and the next
/// wait fails with a shape error).
pub(crate) fn call_axpy_rows(b: &CudaBackend, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "axpy_rows";
    let row_bytes = check_mat(op, w)?;
    check_len(op, "rows", rows, n_rows * 4)?;
    check_len(op, "coef", coef, n_rows * 4)?;
    check_len(op, "out", out, w.cols * 4)?;
    if w.cols == 0 {
        return Ok(());
    }
    let f = b.func(kernel_name("axpy_rows", w.dtype, op)?)?;
    let (n_w_rows, n_rows32, cols) = (w.rows as u32, to_u32(op, "rows", n_rows)?, w.cols as u32);
    let (wp, rp, cp, op_out) = (b.ptr(&w.buf, op)?, b.ptr(rows, op)?, b.ptr(coef, op)?, b.ptr(out, op)?);
    let status = b.status_for_rows();
    let mut l = b.stream().launch_builder(f);
    l.arg(&wp).arg(&row_bytes).arg(&n_w_rows).arg(&rp).arg(&cp).arg(&n_rows32).arg(&op_out).arg(&cols).arg(&status);
    // SAFETY: sizes checked above.
    unsafe { l.launch(config((cols.div_ceil(THREADS), 1), THREADS)) }.map_err(|e| launch_err(op, e))?;
    Ok(())
}

/// RMSNorm of `n_rows` rows of `weight.len_f32()` elements.
pub(crate) fn call_rms_norm(b: &CudaBackend, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()> {
    let op = "rms_norm";
    let dim = weight.len_f32();
    check_len(op, "x", x, n_rows * dim * 4)?;
    check_len(op, "out", out, n_rows * dim * 4)?;
    if n_rows == 0 || dim == 0 {
        return Ok(());
    }
    let (n_rows32, dim32) = (to_u32(op, "rows", n_rows)?, to_u32(op, "dim", dim)?);
    let (xp, wp, op_out) = (b.ptr(x, op)?, b.ptr(weight, op)?, b.ptr(out, op)?);
    let f = b.func("rms_norm")?;
    let mut l = b.stream().launch_builder(f);
    l.arg(&xp).arg(&wp).arg(&op_out).arg(&dim32).arg(&eps);
    // SAFETY: sizes checked above.
    unsafe { l.launch(config((n_rows32, 1), THREADS)) }.map_err(|e| launch_err(op, e))?;
    Ok(())
}

/// RoPE in place over `(n_tokens, n_heads, head_dim)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn call_rope(b: &CudaBackend, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()> {
    let op = "rope";
    let half = head_dim / 2;
    check_len(op, "x", x, n_tokens * n_heads * head_dim * 4)?;
    check_len(op, "cos", cos, n_tokens * half * 4)?;
    check_len(op, "sin", sin, n_tokens * half * 4)?;
    let pairs = n_tokens * n_heads * half;
    if pairs == 0 {
        return Ok(());
    }
    let grid = to_u32(op, "blocks", pairs.div_ceil(THREADS as usize))?;
    let (nt, nh, hd, il) = (to_u32(op, "tokens", n_tokens)?, to_u32(op, "heads", n_heads)?, to_u32(op, "head_dim", head_dim)?, interleaved as u32);
    let (xp, cp, sp) = (b.ptr(x, op)?, b.ptr(cos, op)?, b.ptr(sin, op)?);
    let f = b.func("rope")?;
    let mut l = b.stream().launch_builder(f);
    l.arg(&xp).arg(&cp).arg(&sp).arg(&nt).arg(&nh).arg(&hd).arg(&il);
    // SAFETY: sizes checked above.
    unsafe { l.launch(config((grid, 1), THREADS)) }.map_err(|e| launch_err(op, e))?;
    Ok(())
}

/// Causal GQA attention of `n_tokens` queries over the caches.
pub(crate) fn call_attention(b: &CudaBackend, s: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "attention";
    let hd = s.head_dim;
    let (q_dim, kv_dim, keys) = (s.n_heads * hd, s.n_kv_heads * hd, s.start + n_tokens);
    if hd == 0 || hd > MAX_HEAD_DIM || s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(KernelError::Shape {
            op,
            expected: format!("head_dim in 1..={MAX_HEAD_DIM}, n_heads a multiple of n_kv_heads > 0"),
            got: format!("{s:?}"),
        });
    }
    check_len(op, "q", q, n_tokens * q_dim * 4)?;
    check_len(op, "out", out, n_tokens * q_dim * 4)?;
    check_len(op, "k", k, keys * kv_dim * 4)?;
    check_len(op, "v", v, keys * kv_dim * 4)?;
    if n_tokens == 0 {
        return Ok(());
    }
    let (nh, nkv, hd32, start) = (to_u32(op, "heads", s.n_heads)?, to_u32(op, "kv heads", s.n_kv_heads)?, hd as u32, to_u32(op, "start", s.start)?);
    to_u32(op, "keys", keys)?;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qp, kp, vp, op_out) = (b.ptr(q, op)?, b.ptr(k, op)?, b.ptr(v, op)?, b.ptr(out, op)?);
    let f = b.func("attention")?;
    for t0 in (0..n_tokens).step_by(MAX_GRID_Y) {
        let (t0, nt) = (t0 as u32, (n_tokens - t0).min(MAX_GRID_Y) as u32);
        let mut l = b.stream().launch_builder(f);
        l.arg(&qp).arg(&kp).arg(&vp).arg(&op_out).arg(&nh).arg(&nkv).arg(&hd32).arg(&start).arg(&scale).arg(&t0);
        // SAFETY: sizes checked above; the kernel is written for 128 threads.
        unsafe { l.launch(config((nh, nt), 128)) }.map_err(|e| launch_err(op, e))?;
    }
    Ok(())
}

/// The elementwise ops over the first `n` elements of `a`.
pub(crate) fn call_elementwise(b: &CudaBackend, op_kind: Elementwise, a: &DeviceBuffer, bb: &DeviceBuffer, n: usize) -> Result<()> {
    let op = "elementwise";
    check_len(op, "a", a, n * 4)?;
    // `b` holds a row of `width` for AddRow, else `n` elements.
    let width = match op_kind {
        Elementwise::AddRow { width } => width,
        _ => n,
    };
    check_len(op, "b", bb, width * 4)?;
    if n == 0 || width == 0 {
        return Ok(());
    }
    let n32 = to_u32(op, "elements", n)?;
    let (ap, bp) = (b.ptr(a, op)?, b.ptr(bb, op)?);
    let name = match op_kind {
        Elementwise::Add => "add",
        Elementwise::AddRow { .. } => "add_row",
        Elementwise::Glu(GluAct::Silu) => "glu_silu",
        Elementwise::Glu(GluAct::Relu) => "glu_relu",
        Elementwise::Glu(GluAct::Gelu) => "glu_gelu",
    };
    let f = b.func(name)?;
    let width32 = to_u32(op, "width", width)?;
    let mut l = b.stream().launch_builder(f);
    l.arg(&ap).arg(&bp).arg(&n32);
    if matches!(op_kind, Elementwise::AddRow { .. }) {
        l.arg(&width32);
    }
    // SAFETY: sizes checked above.
    unsafe { l.launch(config((n32.div_ceil(THREADS), 1), THREADS)) }.map_err(|e| launch_err(op, e))?;
    Ok(())
}
