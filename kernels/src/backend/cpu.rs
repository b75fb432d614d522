//! The [`Backend`] ops on host memory with this crate's CPU kernels: the definition of each op's
//! semantics for the device backends, and a stand-in device for testing the hybrid executor on a
//! machine without a GPU. Not a fast path: every op copies its inputs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{AttnShape, Backend, DeviceBuffer, DeviceMat, Elementwise, GluAct};
use crate::cpu::{attention, matmul, ops};
use crate::quant::{dequantize_row, DType};
use crate::{KernelError, MatRef, Result};

/// Host memory counted as device memory.
struct HostMem {
    data: Mutex<Vec<u8>>,
    counter: Arc<AtomicUsize>,
}

impl Drop for HostMem {
    fn drop(&mut self) {
        let n = self.data.get_mut().map(|d| d.len()).unwrap_or(0);
        self.counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// See the module header.
#[derive(Default)]
pub struct CpuBackend {
    allocated: Arc<AtomicUsize>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn mem<'a>(&self, b: &'a DeviceBuffer, op: &'static str) -> Result<&'a HostMem> {
        b.handle::<HostMem>(op)
    }

    fn load_f32(&self, b: &DeviceBuffer, n: usize, op: &'static str) -> Result<Vec<f32>> {
        let mem = self.mem(b, op)?;
        let data = mem.data.lock().map_err(|_| poisoned(op))?;
        if n * 4 > data.len() {
            return Err(short(op, n * 4, data.len()));
        }
        Ok(data[..n * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn load_u32(&self, b: &DeviceBuffer, n: usize, op: &'static str) -> Result<Vec<u32>> {
        Ok(self.load_f32(b, n, op)?.into_iter().map(f32::to_bits).collect())
    }

    fn store_f32(&self, b: &DeviceBuffer, offset: usize, v: &[f32], op: &'static str) -> Result<()> {
        let mem = self.mem(b, op)?;
        let mut data = mem.data.lock().map_err(|_| poisoned(op))?;
        let end = (offset + v.len()) * 4;
        if end > data.len() {
            return Err(short(op, end, data.len()));
        }
        for (d, x) in data[offset * 4..end].chunks_exact_mut(4).zip(v) {
            d.copy_from_slice(&x.to_le_bytes());
        }
        Ok(())
    }

    /// Runs `f` on the weight's bytes as a [`MatRef`].
    fn with_mat<T>(&self, w: &DeviceMat, op: &'static str, f: impl FnOnce(MatRef<'_>) -> Result<T>) -> Result<T> {
        let mem = self.mem(&w.buf, op)?;
        let data = mem.data.lock().map_err(|_| poisoned(op))?;
        f(MatRef::new(w.dtype, w.rows, w.cols, &data)?)
    }
}

fn poisoned(op: &'static str) -> KernelError {
    KernelError::Device { backend: "cpu".into(), op, problem: "buffer lock poisoned".into() }
}

fn short(op: &'static str, need: usize, have: usize) -> KernelError {
    KernelError::Shape { op, expected: format!("a buffer of at least {need} bytes"), got: format!("{have} bytes") }
}

fn check_rows(op: &'static str, rows: &[u32], n: usize) -> Result<()> {
    match rows.iter().find(|&&r| r as usize >= n) {
        Some(r) => Err(KernelError::Shape { op, expected: format!("row indices < {n}"), got: format!("row {r}") }),
        None => Ok(()),
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu (host memory)".into()
    }

    fn allocated_bytes(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.upload(&vec![0u8; bytes])
    }

    fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        self.allocated.fetch_add(data.len(), Ordering::Relaxed);
        let mem = HostMem { data: Mutex::new(data.to_vec()), counter: self.allocated.clone() };
        Ok(DeviceBuffer::new(data.len(), mem))
    }

    fn write(&self, dst: &DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let mut d = self.mem(dst, "write")?.data.lock().map_err(|_| poisoned("write"))?;
        if offset + data.len() > d.len() {
            return Err(short("write", offset + data.len(), d.len()));
        }
        d[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, src: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let d = self.mem(src, "read")?.data.lock().map_err(|_| poisoned("read"))?;
        if offset + out.len() > d.len() {
            return Err(short("read", offset + out.len(), d.len()));
        }
        out.copy_from_slice(&d[offset..offset + out.len()]);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn copy(&self, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()> {
        let v = self.load_f32(src, src_off + n, "copy")?;
        self.store_f32(dst, dst_off, &v[src_off..], "copy")
    }

    fn matmul(&self, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
        let x = self.load_f32(x, n_tokens * w.cols, "matmul")?;
        let mut y = vec![0.0f32; n_tokens * w.rows];
        self.with_mat(w, "matmul", |m| matmul(m, &x, n_tokens, &mut y))?;
        self.store_f32(out, 0, &y, "matmul")
    }

    fn matvec_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        let rows = self.load_u32(rows, n_rows, "matvec_rows")?;
        check_rows("matvec_rows", &rows, w.rows)?;
        let x = self.load_f32(x, w.cols, "matvec_rows")?;
        let y = self.with_mat(w, "matvec_rows", |m| {
            let kernels = crate::quant::RowKernels::for_dtype(m.dtype);
            Ok(rows.iter().map(|&r| (kernels.dot)(m.row(r as usize), &x)).collect::<Vec<f32>>())
        })?;
        self.store_f32(out, 0, &y, "matvec_rows")
    }

    fn axpy_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        let rows = self.load_u32(rows, n_rows, "axpy_rows")?;
        check_rows("axpy_rows", &rows, w.rows)?;
        let coef = self.load_f32(coef, n_rows, "axpy_rows")?;
        let y = self.with_mat(w, "axpy_rows", |m| {
            let (mut y, mut row) = (vec![0.0f32; m.cols], vec![0.0f32; m.cols]);
            for (&r, &c) in rows.iter().zip(&coef) {
                dequantize_row(m.dtype, m.row(r as usize), &mut row)?;
                y.iter_mut().zip(&row).for_each(|(y, w)| *y += c * w);
            }
            Ok(y)
        })?;
        self.store_f32(out, 0, &y, "axpy_rows")
    }

    fn rms_norm(&self, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()> {
        let dim = weight.len_f32();
        let w = self.load_f32(weight, dim, "rms_norm")?;
        let mut v = self.load_f32(x, n_rows * dim, "rms_norm")?;
        v.chunks_mut(dim.max(1)).for_each(|row| ops::rms_norm(row, &w, eps));
        self.store_f32(out, 0, &v, "rms_norm")
    }

    fn rope(&self, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()> {
        let half = head_dim / 2;
        let (cos, sin) = (self.load_f32(cos, n_tokens * half, "rope")?, self.load_f32(sin, n_tokens * half, "rope")?);
        let mut v = self.load_f32(x, n_tokens * n_heads * head_dim, "rope")?;
        for (i, head) in v.chunks_mut(head_dim.max(1)).enumerate() {
            let t = i / n_heads;
            ops::rope(head, &cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half], interleaved);
        }
        self.store_f32(x, 0, &v, "rope")
    }

    fn attention(&self, shape: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        let q_dim = shape.n_heads * shape.head_dim;
        let kv = (shape.start + n_tokens) * shape.n_kv_heads * shape.head_dim;
        let q = self.load_f32(q, n_tokens * q_dim, "attention")?;
        let (k, v) = (self.load_f32(k, kv, "attention")?, self.load_f32(v, kv, "attention")?);
        let mut o = vec![0.0f32; n_tokens * q_dim];
        attention(shape, &q, &k, &v, &mut o)?;
        self.store_f32(out, 0, &o, "attention")
    }

    fn elementwise(&self, op: Elementwise, a: &DeviceBuffer, b: &DeviceBuffer, n: usize) -> Result<()> {
        let mut va = self.load_f32(a, n, "elementwise")?;
        match op {
            Elementwise::Add => {
                let vb = self.load_f32(b, n, "elementwise")?;
                ops::add_assign(&mut va, &vb);
            }
            Elementwise::AddRow { width } => {
                let vb = self.load_f32(b, width, "elementwise")?;
                va.chunks_mut(width.max(1)).for_each(|row| ops::add_assign(row, &vb));
            }
            Elementwise::Glu(act) => {
                let vb = self.load_f32(b, n, "elementwise")?;
                for (x, u) in va.iter_mut().zip(&vb) {
                    *x = glu(act, *x) * u;
                }
            }
        }
        self.store_f32(a, 0, &va, "elementwise")
    }

    fn supports(&self, dtype: DType) -> bool {
        DType::ALL.contains(&dtype)
    }
}

/// `act(x)` of a gated unit.
pub fn glu(act: GluAct, x: f32) -> f32 {
    match act {
        GluAct::Silu => ops::silu(x),
        GluAct::Relu => x.max(0.0),
        GluAct::Gelu => ops::gelu(x),
    }
}
