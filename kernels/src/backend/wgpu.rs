//! The [`Backend`] on any GPU wgpu reaches through Vulkan, Metal, DX12 or GL (compute shaders in
//! WGSL, `wgpu/shaders/`), with the semantics of [`super::cpu::CpuBackend`].
//!
//! - `device.rs`: buffers (padded to 4 bytes; a matrix larger than one storage binding is split
//!   into pieces of whole rows), the count of device memory (every buffer: the backend itself
//!   holds a parameter ring of 64 slots and an 8-byte status word, 4 KiB on lavapipe; a read's
//!   staging buffer lives for the read), reads, writes, and submitting dispatches (recorded into
//!   one pending encoder, submitted by `flush`, `read`, `synchronize`, `write` and every 48
//!   dispatches).
//! - `pipelines.rs`: the kernels, built on first use.
//! - `matmul.rs`: the weight products over raw GGUF blocks (every format of [`DType::ALL`]:
//!   F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K), read as u32 words with byte
//!   extraction, no repacking.
//! - `ops.rs`: RMSNorm, RoPE, attention, elementwise, copy.
//!
//! Errors found on the device (a row index out of range in `matvec_rows`/`axpy_rows`, a wgpu
//! validation error) are reported by the next `read` or `synchronize`, as the ops are queued.

mod device;
mod matmul;
mod ops;
mod pipelines;

use super::{AttnShape, Backend, DeviceBuffer, DeviceMat, Elementwise};
use crate::quant::DType;
use crate::{KernelError, MatRef, Result};
use device::{device_err, Gpu};

/// See the module header.
pub struct WgpuBackend {
    gpu: Gpu,
    name: String,
}

impl WgpuBackend {
    /// The adapter at `index` among those wgpu finds (Vulkan, Metal, DX12, GL) that can run
    /// compute shaders, discrete GPUs first, then integrated, virtual, and software adapters
    /// (Mesa's lavapipe/llvmpipe) last; `hardware_only` skips the software ones.
    pub fn new(index: usize, hardware_only: bool) -> Result<Self> {
        let op = "open";
        let instance = wgpu::Instance::new(&wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL,
            ..Default::default()
        });
        let adapters: Vec<wgpu::Adapter> = instance
            .enumerate_adapters(wgpu::Backends::all())
            .into_iter()
            .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
            .filter(|a| !hardware_only || a.get_info().device_type != wgpu::DeviceType::Cpu)
            .collect();
        // GPUs first, software last; wgpu's order (Vulkan before GL) within each kind.
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
            wgpu::DeviceType::Cpu => 3,
        };
        let mut adapters = adapters;
        adapters.sort_by_key(rank);
        let describe = |a: &wgpu::Adapter| {
            let info = a.get_info();
            format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
        };
        let Some(adapter) = adapters.get(index) else {
            let found: Vec<String> = adapters.iter().map(describe).collect();
            let found = if found.is_empty() { "none".to_string() } else { found.join("; ") };
            let kind = if hardware_only { "hardware adapter" } else { "adapter" };
            return Err(device_err(op, format!("no {kind} {index}; found: {found}")));
        };
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ember"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| device_err(op, format!("opening {}: {e}", describe(adapter))))?;
        let name = format!("wgpu:{index} ({}, {:?})", info.name, info.backend);
        Ok(Self { gpu: Gpu::new(device, queue), name })
    }

    /// Caps the bytes of one piece of a matrix below the adapter's storage-binding limit, so
    /// that tests can split a small matrix the way a large one is split.
    pub fn set_max_piece_bytes(&mut self, bytes: usize) {
        self.gpu.max_piece = self.gpu.max_piece.min(bytes / 4 * 4).max(4);
    }

    /// The largest piece of a matrix, in bytes (the adapter's storage-binding limit, at most
    /// 2 GiB, unless capped by [`Self::set_max_piece_bytes`]).
    pub fn max_piece_bytes(&self) -> usize {
        self.gpu.max_piece
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn allocated_bytes(&self) -> usize {
        self.gpu.allocated()
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.gpu.buffer("alloc", bytes, None)
    }

    fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        self.gpu.buffer("upload", data.len(), Some(data))
    }

    fn write(&self, dst: &DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        self.gpu.write(dst, offset, data)
    }

    fn read(&self, src: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        self.gpu.read(src, offset, out)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize()
    }

    fn flush(&self) -> Result<()> {
        self.gpu.flush("flush")
    }

    fn copy(&self, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()> {
        ops::call_copy(&self.gpu, src, src_off, dst, dst_off, n)
    }

    fn matmul(&self, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
        matmul::call_matmul(&self.gpu, w, x, n_tokens, out)
    }

    fn matvec_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        matmul::call_matvec_rows(&self.gpu, w, rows, n_rows, x, out)
    }

    fn axpy_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        matmul::call_axpy_rows(&self.gpu, w, rows, n_rows, coef, out)
    }

    fn rms_norm(&self, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()> {
        ops::call_rms_norm(&self.gpu, x, weight, n_rows, eps, out)
    }

    fn rope(&self, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()> {
        ops::call_rope(&self.gpu, x, cos, sin, n_tokens, n_heads, head_dim, interleaved)
    }

    fn attention(&self, shape: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        ops::call_attention(&self.gpu, shape, n_tokens, q, k, v, out)
    }

    fn elementwise(&self, op: Elementwise, a: &DeviceBuffer, b: &DeviceBuffer, n: usize) -> Result<()> {
        ops::call_elementwise(&self.gpu, op, a, b, n)
    }

    fn supports(&self, dtype: DType) -> bool {
        pipelines::FORMATS.contains(&dtype)
    }

    /// Splits a matrix larger than one storage binding into pieces of whole rows.
    fn upload_mat(&self, m: MatRef<'_>) -> Result<DeviceMat> {
        if !self.supports(m.dtype) {
            return Err(KernelError::Unsupported { op: "upload_mat", dtype: m.dtype.name() });
        }
        let m = MatRef::new(m.dtype, m.rows, m.cols, m.data)?;
        let row_bytes = m.dtype.row_bytes(m.cols)?;
        let buf = self.gpu.matrix("upload_mat", m.data, m.rows, row_bytes)?;
        Ok(DeviceMat { dtype: m.dtype, rows: m.rows, cols: m.cols, buf })
    }
}
