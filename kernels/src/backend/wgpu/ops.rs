//! The activation ops: RMSNorm, RoPE, attention, elementwise, copy. Each wrapper checks the
//! shapes the CPU backend checks (`backend/cpu.rs`, `cpu/attention.rs`), then queues one
//! dispatch of its kernel.

use super::device::{device_err, handle, params, Dispatch, Gpu, Groups};
use super::pipelines::Kernel;
use crate::backend::{AttnShape, DeviceBuffer, Elementwise, GluAct};
use crate::{KernelError, Result};

/// Threads per workgroup of the one-thread-per-element kernels.
const GROUP: usize = 256;
/// Largest head the attention kernel holds (4 dimensions per thread of a stream of 64).
const MAX_HEAD_DIM: usize = 256;

fn u32_of(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| device_err(op, format!("{what} = {n} does not fit the kernels' 32-bit indices")))
}

/// RMSNorm of each row of `x` (`(n_rows, weight.len)`) into `out`.
pub(super) fn call_rms_norm(g: &Gpu, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()> {
    let op = "rms_norm";
    let dim = weight.len_f32();
    let xb = g.bind(op, "x", x, n_rows * dim * 4)?;
    let wb = g.bind(op, "weight", weight, dim * 4)?;
    let ob = g.bind(op, "out", out, n_rows * dim * 4)?;
    if n_rows == 0 || dim == 0 {
        return Ok(());
    }
    let p = params(&[u32_of(op, "dim", dim)?, u32_of(op, "n_rows", n_rows)?, eps.to_bits()]);
    g.run(op, &[Dispatch { kernel: Kernel::RmsNorm, params: p, bindings: vec![xb, wb, ob], groups: Groups::Linear(u32_of(op, "n_rows", n_rows)?) }])
}

/// Rotates each of the `n_tokens * n_heads` heads of `x` in place with token `t`'s `cos`/`sin`.
#[allow(clippy::too_many_arguments)]
pub(super) fn call_rope(g: &Gpu, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()> {
    let op = "rope";
    let half = head_dim / 2;
    let xb = g.bind(op, "x", x, n_tokens * n_heads * head_dim * 4)?;
    let cb = g.bind(op, "cos", cos, n_tokens * half * 4)?;
    let sb = g.bind(op, "sin", sin, n_tokens * half * 4)?;
    let pairs = n_tokens * n_heads * half;
    if pairs == 0 {
        return Ok(());
    }
    let p = params(&[u32_of(op, "n_tokens", n_tokens)?, u32_of(op, "n_heads", n_heads)?, u32_of(op, "head_dim", head_dim)?, interleaved as u32]);
    let groups = Groups::Linear(u32_of(op, "pairs", pairs.div_ceil(GROUP))?);
    g.run(op, &[Dispatch { kernel: Kernel::Rope, params: p, bindings: vec![xb, cb, sb], groups }])
}

/// Causal attention of `n_tokens` queries at positions `shape.start..` over the caches `k`, `v`
/// (`(ctx, n_kv_heads*head_dim)`); `q` and `out` are `(n_tokens, n_heads*head_dim)`.
pub(super) fn call_attention(g: &Gpu, s: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
    let op = "attention";
    let hd = s.head_dim;
    if hd == 0 || hd > MAX_HEAD_DIM || s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(KernelError::Shape {
            op,
            expected: format!("0 < head_dim <= {MAX_HEAD_DIM} and n_heads a multiple of n_kv_heads"),
            got: format!("{s:?}"),
        });
    }
    let (q_dim, kv_dim) = (s.n_heads * hd, s.n_kv_heads * hd);
    let keys = s.start + n_tokens;
    let qb = g.bind(op, "q", q, n_tokens * q_dim * 4)?;
    let kb = g.bind(op, "k", k, keys * kv_dim * 4)?;
    let vb = g.bind(op, "v", v, keys * kv_dim * 4)?;
    let ob = g.bind(op, "out", out, n_tokens * q_dim * 4)?;
    if n_tokens == 0 || s.n_heads == 0 {
        return Ok(());
    }
    let p = params(&[
        u32_of(op, "n_heads", s.n_heads)?,
        u32_of(op, "n_kv_heads", s.n_kv_heads)?,
        hd as u32,
        u32_of(op, "start", s.start)?,
        u32_of(op, "n_tokens", n_tokens)?,
        (1.0 / (hd as f32).sqrt()).to_bits(),
    ]);
    let groups = Groups::Linear(u32_of(op, "n_tokens * n_heads", n_tokens * s.n_heads)?);
    g.run(op, &[Dispatch { kernel: Kernel::Attention, params: p, bindings: vec![qb, kb, vb, ob], groups }])
}

/// An elementwise op over the first `n` elements of `a`.
pub(super) fn call_elementwise(g: &Gpu, op_kind: Elementwise, a: &DeviceBuffer, b: &DeviceBuffer, n: usize) -> Result<()> {
    let op = "elementwise";
    let (code, act, width, b_len) = match op_kind {
        Elementwise::Add => (0, 0, 0, n),
        Elementwise::AddRow { width } => {
            if width == 0 && n > 0 {
                return Err(KernelError::Shape { op, expected: "AddRow width > 0".into(), got: "0".into() });
            }
            (1, 0, width, width)
        }
        Elementwise::Glu(act) => (2, glu_code(act), 0, n),
    };
    let ab = g.bind(op, "a", a, n * 4)?;
    let bb = g.bind(op, "b", b, b_len * 4)?;
    if n == 0 {
        return Ok(());
    }
    let p = params(&[u32_of(op, "n", n)?, code, act, u32_of(op, "width", width)?]);
    let groups = Groups::Linear(u32_of(op, "n", n.div_ceil(GROUP))?);
    g.run(op, &[Dispatch { kernel: Kernel::Elementwise, params: p, bindings: vec![ab, bb], groups }])
}

fn glu_code(act: GluAct) -> u32 {
    match act {
        GluAct::Silu => 0,
        GluAct::Relu => 1,
        GluAct::Gelu => 2,
    }
}

/// `dst[dst_off..dst_off+n] = src[src_off..src_off+n]` (f32 elements).
pub(super) fn call_copy(g: &Gpu, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()> {
    let op = "copy";
    let (src_end, dst_end) = ((src_off + n) * 4, (dst_off + n) * 4);
    g.bind(op, "src", src, src_end)?;
    g.bind(op, "dst", dst, dst_end)?;
    if n == 0 {
        return Ok(());
    }
    let (sp, dp) = (&handle(src, op)?.pieces[0], &handle(dst, op)?.pieces[0]);
    if sp.buffer != dp.buffer {
        return g.copy_between(&sp.buffer, src_off as u64 * 4, &dp.buffer, dst_off as u64 * 4, n as u64 * 4);
    }
    if src_off == dst_off {
        return Ok(());
    }
    let ab = g.bind(op, "buffer", src, src_end.max(dst_end))?;
    let overlap = src_off < dst_off + n && dst_off < src_off + n;
    let p = params(&[u32_of(op, "src_off", src_off)?, u32_of(op, "dst_off", dst_off)?, u32_of(op, "n", n)?, overlap as u32]);
    let groups = Groups::Linear(if overlap { 1 } else { u32_of(op, "n", n.div_ceil(GROUP))? });
    g.run(op, &[Dispatch { kernel: Kernel::Copy, params: p, bindings: vec![ab], groups }])
}
