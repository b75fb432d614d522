//! The device interface: what the forward pass asks of a GPU (or of the CPU standing in for one).
//!
//! A [`Backend`] owns device memory ([`DeviceBuffer`], [`DeviceMat`]) and queues ops on it. Ops
//! are asynchronous where the device allows: they return once queued, and only [`Backend::read`]
//! and [`Backend::synchronize`] wait. The hybrid executor relies on this: it queues a layer's hot
//! neurons on the GPU, computes the cold ones on the CPU meanwhile, then reads the GPU's part.
//!
//! Semantics of every op are those of [`cpu::CpuBackend`] (the CPU kernels of this crate), and
//! `tests/backend.rs` checks each backend against the naive f32 reference.
//!
//! All `cfg` of the crate live here: each device backend is a module behind a cargo feature; when
//! the feature is off, [`open`] answers [`KernelError::NotCompiled`] for it.

pub mod cpu;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::quant::DType;
use crate::{KernelError, MatRef, Result};

pub use crate::cpu::AttnShape;

/// Memory on a device: `bytes` long, zeroed when made by [`Backend::alloc`].
pub struct DeviceBuffer {
    bytes: usize,
    /// The backend's own handle (a `wgpu::Buffer`, a CUDA slice, host memory).
    inner: Box<dyn Any + Send + Sync>,
}

impl DeviceBuffer {
    /// Wraps a backend's handle; `bytes` is the size the caller asked for (the handle may be
    /// padded).
    pub fn new<T: Any + Send + Sync>(bytes: usize, inner: T) -> Self {
        Self { bytes, inner: Box::new(inner) }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// f32 elements this buffer holds.
    pub fn len_f32(&self) -> usize {
        self.bytes / 4
    }

    /// The backend's handle, or an error naming `op` when the buffer belongs to another backend.
    pub fn handle<T: Any>(&self, op: &'static str) -> Result<&T> {
        self.inner.downcast_ref::<T>().ok_or_else(|| KernelError::Device {
            backend: "?".into(),
            op,
            problem: "buffer belongs to another backend".into(),
        })
    }
}

impl fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceBuffer({} bytes)", self.bytes)
    }
}

/// A weight matrix on a device, rows in one of the block formats exactly as in the model file
/// (`rows` outputs, `cols` inputs).
#[derive(Debug)]
pub struct DeviceMat {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub buf: DeviceBuffer, // (rows, row_bytes(cols)), possibly repacked by the backend
}

/// Activation of a gated linear unit: `a = act(a) * b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GluAct {
    Silu,
    Relu,
    /// GELU, tanh approximation.
    Gelu,
}

/// The elementwise ops, over f32 buffers `a` (written) and `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    /// `a[i] += b[i]` for `i < n`.
    Add,
    /// `a[t*width + i] += b[i]` for `t*width + i < n` (a bias over rows of `width`).
    AddRow { width: usize },
    /// `a[i] = act(a[i]) * b[i]` for `i < n`.
    Glu(GluAct),
}

/// A device: memory and the ops of the forward pass. All f32 buffers are little-endian `f32`s;
/// index buffers are `u32`s. Shapes are given in elements.
pub trait Backend: Send + Sync {
    /// e.g. `wgpu:0 (NVIDIA GeForce GTX 1060, Vulkan)`.
    fn name(&self) -> String;

    /// Device memory this backend holds now, in bytes (what a VRAM budget counts).
    fn allocated_bytes(&self) -> usize;

    /// A zeroed buffer of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer>;

    /// A buffer holding `data`.
    fn upload(&self, data: &[u8]) -> Result<DeviceBuffer>;

    /// Copies `data` into `dst` at byte `offset` (a multiple of 4), after the work queued so far.
    fn write(&self, dst: &DeviceBuffer, offset: usize, data: &[u8]) -> Result<()>;

    /// Waits for the queued work, then copies `out.len()` bytes of `src` from byte `offset`.
    fn read(&self, src: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()>;

    /// Waits until every queued op has finished.
    fn synchronize(&self) -> Result<()>;

    /// Starts the queued work without waiting for it (a backend that records ops before
    /// submitting them submits here), so the CPU can compute meanwhile.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// `(free, total)` device memory in bytes, when the device tells.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// `dst[dst_off..dst_off+n] = src[src_off..src_off+n]` (f32 elements).
    fn copy(&self, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()>;

    /// `out = x · Wᵀ`: `x` is `(n_tokens, w.cols)`, `out` `(n_tokens, w.rows)`.
    fn matmul(&self, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()>;

    /// One token, a subset of rows: `out[k] = W[rows[k]] · x` for `k < n_rows`.
    fn matvec_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()>;

    /// A weighted sum of a subset of rows: `out[c] = Σ_{k < n_rows} coef[k] · W[rows[k]][c]`
    /// (`out` is `(w.cols)`, overwritten). With `W` holding one neuron's `down` weights per row,
    /// this is `down · h` over the kept neurons.
    fn axpy_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()>;

    /// RMSNorm of each row of `x` (`(n_rows, weight.len)`) into `out`:
    /// `out = x / sqrt(mean(x²) + eps) * weight`.
    fn rms_norm(&self, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()>;

    /// Rotates, in place, each of the `n_tokens * n_heads` heads of `x` (`(n_tokens, n_heads,
    /// head_dim)`) with token `t`'s `cos`/`sin` (`(n_tokens, head_dim/2)`); `interleaved`:
    /// pairs `(2i, 2i+1)`, else `(i, i + head_dim/2)`.
    #[allow(clippy::too_many_arguments)]
    fn rope(&self, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()>;

    /// Causal attention of `n_tokens` queries at positions `shape.start..` over the first
    /// `shape.start + n_tokens` rows of the caches `k`, `v` (`(ctx, n_kv_heads*head_dim)`);
    /// `q` and `out` are `(n_tokens, n_heads*head_dim)`.
    fn attention(&self, shape: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()>;

    /// An elementwise op over the first `n` elements of `a` (see [`Elementwise`]).
    fn elementwise(&self, op: Elementwise, a: &DeviceBuffer, b: &DeviceBuffer, n: usize) -> Result<()>;

    /// Formats [`Backend::matmul`] and friends accept.
    fn supports(&self, dtype: DType) -> bool;

    // ---- conveniences built from the ops above ----

    /// A weight matrix on the device.
    fn upload_mat(&self, m: MatRef<'_>) -> Result<DeviceMat> {
        if !self.supports(m.dtype) {
            return Err(KernelError::Unsupported { op: "upload_mat", dtype: m.dtype.name() });
        }
        Ok(DeviceMat { dtype: m.dtype, rows: m.rows, cols: m.cols, buf: self.upload(m.data)? })
    }

    /// f32s on the device.
    fn upload_f32(&self, data: &[f32]) -> Result<DeviceBuffer> {
        self.upload(&f32_bytes(data))
    }

    /// u32s on the device.
    fn upload_u32(&self, data: &[u32]) -> Result<DeviceBuffer> {
        self.upload(&data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Writes f32s at element `offset`.
    fn write_f32(&self, dst: &DeviceBuffer, offset: usize, data: &[f32]) -> Result<()> {
        self.write(dst, offset * 4, &f32_bytes(data))
    }

    /// Writes u32s at element `offset`.
    fn write_u32(&self, dst: &DeviceBuffer, offset: usize, data: &[u32]) -> Result<()> {
        self.write(dst, offset * 4, &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Reads `out.len()` f32s from element `offset` (waits for the queued work).
    fn read_f32(&self, src: &DeviceBuffer, offset: usize, out: &mut [f32]) -> Result<()> {
        let mut bytes = vec![0u8; out.len() * 4];
        self.read(src, offset * 4, &mut bytes)?;
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }
}

/// Little-endian bytes of f32s.
pub fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Which device to run on: `--gpu auto|none|cpu|cuda:N|wgpu:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first usable GPU: CUDA, then a wgpu adapter that is real hardware; else the CPU.
    #[default]
    Auto,
    /// CPU only.
    None,
    Cuda(usize),
    Wgpu(usize),
    /// [`cpu::CpuBackend`] standing in for a GPU: runs the hybrid executor on a machine without
    /// one (tests, debugging); never faster than the CPU alone.
    Host,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let index = |rest: &str| rest.parse::<usize>().map_err(|_| format!("device index '{rest}' in '{s}' is not a number"));
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "host" => Ok(DeviceSpec::Host),
            "none" | "cpu" => Ok(DeviceSpec::None),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu(0)),
            t => match t.split_once(':') {
                Some(("cuda", n)) => Ok(DeviceSpec::Cuda(index(n)?)),
                Some(("wgpu", n)) => Ok(DeviceSpec::Wgpu(index(n)?)),
                _ => Err(format!("unknown device '{s}': expected auto, none, cuda:N, wgpu:N or host")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::None => write!(f, "none"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceSpec::Host => write!(f, "host"),
        }
    }
}

/// Opens the device `spec` names. `Ok(None)`: the CPU only (`none`, or `auto` finding no GPU).
/// An explicit device that cannot be opened (not compiled in, no driver, no such index) is an
/// error; callers that fall back to the CPU print it.
pub fn open(spec: DeviceSpec) -> Result<Option<Arc<dyn Backend>>> {
    match spec {
        DeviceSpec::None => Ok(None),
        DeviceSpec::Host => Ok(Some(Arc::new(cpu::CpuBackend::new()))),
        DeviceSpec::Cuda(i) => open_cuda(i).map(Some),
        DeviceSpec::Wgpu(i) => open_wgpu(i, false).map(Some),
        DeviceSpec::Auto => {
            if let Ok(b) = open_cuda(0) {
                return Ok(Some(b));
            }
            if !may_have_gpu() {
                return Ok(None);
            }
            Ok(open_wgpu(0, true).ok())
        }
    }
}

/// Whether a hardware GPU can be present for `auto` to find through wgpu. On Linux every GPU
/// driver exposes a DRM render node (or NVIDIA's device files); without any, the probe could only
/// find software adapters, which `auto` skips anyway, and it would load them for nothing (Mesa's
/// lavapipe adds some 50 MiB to the resident memory of a CPU-only run).
fn may_have_gpu() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let nodes = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
    };
    nodes("/dev/dri", "renderD") || nodes("/dev", "nvidia")
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(cuda::CudaBackend::new(index)?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_index: usize) -> Result<Arc<dyn Backend>> {
    Err(KernelError::NotCompiled("cuda"))
}

/// `hardware_only`: skip software adapters (Mesa's lavapipe), slower than the CPU kernels.
#[cfg(feature = "wgpu")]
fn open_wgpu(index: usize, hardware_only: bool) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(wgpu::WgpuBackend::new(index, hardware_only)?))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu(_index: usize, _hardware_only: bool) -> Result<Arc<dyn Backend>> {
    Err(KernelError::NotCompiled("wgpu"))
}
