//! The CUDA backend: cudarc's driver API (libcuda loaded at run time) and kernels compiled with
//! NVRTC for the device's own architecture, following candle's CUDA backend (one `.cu` source per
//! kernel family, a Rust `call_<op>` wrapper each) and llama.cpp's ggml-cuda kernels (mmvq.cu:
//! integer dots of quantized weights with 8-bit activations, `__dp4a`, sm_61+ — so Pascal cards
//! run the quantized formats fast without fp16).
//!
//! Everything is queued on one stream: ops return once their kernels are launched, and only
//! [`Backend::read`] and [`Backend::synchronize`] wait. Buffers are raw device allocations
//! (cudarc's event tracking is off: one stream orders everything), counted in
//! [`Backend::allocated_bytes`] until dropped, internal scratch included (the 8-bit activation
//! scratch and the status word are made with the backend; a product larger than the resident
//! scratch takes its own for the call). Row lists live on the device, so an index past the matrix
//! is found by the kernel: it sets the status word, and the next wait fails with a shape error.
//! Supported formats: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (not Q2_K,
//! Q3_K). Devices below compute capability 6.1 are refused.
//!
//! The files: `cuda/compile.rs` (the sources, NVRTC, the disk cache, [`compile_all`] for the
//! compile check), `cuda/ops.rs` (the `call_<op>` wrappers: shape checks and launches),
//! `cuda/kernels/*.cu` (the kernels).

mod compile;
mod ops;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

pub use compile::{
    arch_digits, cache_dir, compile, compile_all, module_image, nvrtc_archs, nvrtc_available, nvrtc_version, pick_target, Image, Output, Source,
    PRELUDE, SOURCES,
};

use super::{AttnShape, Backend, DeviceBuffer, DeviceMat, Elementwise};
use crate::quant::DType;
use crate::{KernelError, Result};

/// Lowest compute capability the kernels run on (`dp4a`).
const MIN_CC: (i32, i32) = (6, 1);
/// Activation blocks of 32 the resident 8-bit scratch holds (1 Mi elements: 1 MiB of quants and
/// 128 KiB of scales); larger products take a scratch of their own for the call.
pub(crate) const Q8_RESIDENT_BLOCKS: usize = 1 << 15;

pub(crate) fn device_err(op: &'static str, problem: impl Into<String>) -> KernelError {
    KernelError::Device { backend: "cuda".into(), op, problem: problem.into() }
}

fn driver_err(op: &'static str, e: drv::DriverError) -> KernelError {
    device_err(op, format!("{e:?}"))
}

/// A device allocation, counted while it lives.
pub(crate) struct CudaMem {
    slice: CudaSlice<u8>,
    ptr: u64,
    /// Bytes allocated (the request rounded up to a multiple of 4, at least 4).
    bytes: usize,
    counter: Arc<AtomicUsize>,
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
        // The slice frees itself on its stream after this; it needs the context on this thread.
        let _ = self.slice.context().bind_to_thread();
    }
}

/// Device scratch for the 8-bit activations of the quantized products.
pub(crate) struct Q8Scratch {
    pub(crate) qs: CudaMem, // (n_tokens * cols) i8
    pub(crate) d: CudaMem,  // (n_tokens * cols / 32) f32
}

/// See the module header.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    funcs: HashMap<&'static str, CudaFunction>,
    allocated: Arc<AtomicUsize>,
    /// Held for the whole of a quantized product (quantize, then dot), so two threads' products
    /// cannot interleave on the shared scratch.
    q8: Mutex<Q8Scratch>,
    /// One u32 the row-list kernels set when an index is past the matrix (bit 0: matvec_rows,
    /// bit 1: axpy_rows); read at the next wait, which then fails with a shape error.
    status: CudaMem,
    /// Whether a row-list op was queued since the status was last read.
    status_pending: AtomicBool,
}

impl CudaBackend {
    /// Opens device `index`: an error, never a panic, when there is no driver, no such device,
    /// a device older than compute capability 6.1, or no NVRTC.
    pub fn new(index: usize) -> Result<Self> {
        // SAFETY: only tries to open the library. cudarc panics on first use without it.
        if !unsafe { drv_sys::is_culib_present() } {
            return Err(device_err("open", "no CUDA driver (libcuda) found"));
        }
        let ctx = std::panic::catch_unwind(|| Self::context(index))
            .map_err(|_| device_err("open", "the CUDA driver library lacks a function cudarc needs"))??;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("open", e))?;
        if (major, minor) < MIN_CC {
            return Err(device_err("open", format!("compute capability {major}.{minor} is below 6.1 (dp4a)")));
        }
        if !nvrtc_available() {
            return Err(device_err("open", "no NVRTC library (libnvrtc.so.12) found on the library path"));
        }
        // SAFETY: all work goes to one stream, which orders every use of every buffer.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_err("open", e))?;
        let digits = format!("{major}{minor}");
        let cc = 10 * major + minor;
        let mut funcs = HashMap::new();
        for source in SOURCES {
            let image = compile::module_image(source, cc, false)?;
            let module = match load(&ctx, source, image) {
                Ok(m) => m,
                // A cached module the driver refuses (damaged, or from another driver): rebuild.
                Err((true, _)) => load(&ctx, source, compile::module_image(source, cc, true)?).map_err(|(_, e)| e)?,
                Err((false, e)) => return Err(e),
            };
            for &k in source.kernels {
                let f = module.load_function(k).map_err(|e| device_err("open", format!("kernel {k}: {e:?}")))?;
                funcs.insert(k, f);
            }
        }
        let device = ctx.name().unwrap_or_else(|_| "unknown device".into());
        let allocated = Arc::new(AtomicUsize::new(0));
        let q8 = Q8Scratch {
            qs: alloc_mem(&stream, &allocated, Q8_RESIDENT_BLOCKS * 32, "open")?,
            d: alloc_mem(&stream, &allocated, Q8_RESIDENT_BLOCKS * 4, "open")?,
        };
        let status = alloc_mem(&stream, &allocated, 4, "open")?;
        // SAFETY: the 4 bytes of `status`, on our stream.
        unsafe { drv::memset_d8_async(status.ptr, 0, 4, stream.cu_stream()) }.map_err(|e| driver_err("open", e))?;
        Ok(Self {
            name: format!("cuda:{index} ({device}, sm_{digits})"),
            ctx,
            stream,
            funcs,
            allocated,
            q8: Mutex::new(q8),
            status,
            status_pending: AtomicBool::new(false),
        })
    }

    fn context(index: usize) -> Result<Arc<CudaContext>> {
        drv::init().map_err(|e| driver_err("open", e))?;
        let count = drv::device::get_count().map_err(|e| driver_err("open", e))?;
        if index >= count.max(0) as usize {
            return Err(device_err("open", format!("no CUDA device {index} ({count} found)")));
        }
        CudaContext::new(index).map_err(|e| driver_err("open", e))
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn bind(&self, op: &'static str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err(op, e))
    }

    pub(crate) fn func(&self, name: &'static str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| device_err("launch", format!("kernel {name} not loaded")))
    }

    /// An uninitialized allocation of at least `bytes` bytes.
    pub(crate) fn raw_alloc(&self, bytes: usize, op: &'static str) -> Result<CudaMem> {
        self.bind(op)?;
        alloc_mem(&self.stream, &self.allocated, bytes, op)
    }

    /// The device address of a buffer of this backend.
    pub(crate) fn ptr(&self, b: &DeviceBuffer, op: &'static str) -> Result<u64> {
        Ok(b.handle::<CudaMem>(op)?.ptr)
    }

    pub(crate) fn q8_scratch(&self) -> &Mutex<Q8Scratch> {
        &self.q8
    }

    /// The status word for a row-list kernel, which the next wait will read.
    pub(crate) fn status_for_rows(&self) -> u64 {
        self.status_pending.store(true, Ordering::Release);
        self.status.ptr
    }

    /// The status word for kernels that cannot set it (whole-matrix products).
    pub(crate) fn status_ptr(&self) -> u64 {
        self.status.ptr
    }

    /// After a wait: fails once with a shape error when a row-list kernel met an index past its
    /// matrix since the last check, clearing the word.
    fn check_status(&self) -> Result<()> {
        if !self.status_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut word = [0u8; 4];
        let stream = self.stream.cu_stream();
        // SAFETY: 4 bytes from the status word; the stream is synchronized before `word` is read.
        unsafe { drv::memcpy_dtoh_async(&mut word, self.status.ptr, stream) }.map_err(|e| driver_err("synchronize", e))?;
        self.stream.synchronize().map_err(|e| driver_err("synchronize", e))?;
        let bits = u32::from_le_bytes(word);
        if bits == 0 {
            return Ok(());
        }
        // SAFETY: the status word, on our stream.
        unsafe { drv::memset_d8_async(self.status.ptr, 0, 4, stream) }.map_err(|e| driver_err("synchronize", e))?;
        Err(KernelError::Shape {
            op: if bits & 1 != 0 { "matvec_rows" } else { "axpy_rows" },
            expected: "row indices below the matrix's row count".into(),
            got: "an index past the matrix (found on the device)".into(),
        })
    }
}

/// Loads the module of `source`: `Err((cached, error))` when the driver refuses it.
fn load(ctx: &Arc<CudaContext>, source: &Source, image: compile::Image) -> std::result::Result<Arc<CudaModule>, (bool, KernelError)> {
    let cached = image.cached;
    let ptx = match image.output {
        Output::Cubin => Ptx::from_binary(image.bytes),
        Output::Ptx => Ptx::from_src(String::from_utf8_lossy(&image.bytes).into_owned()),
    };
    ctx.load_module(ptx).map_err(|e| (cached, device_err("open", format!("loading {}: {e:?}", source.name))))
}

/// An uninitialized allocation of at least `bytes` bytes (a multiple of 4, at least 4) on
/// `stream`, counted in `counter` until dropped. The caller has bound the context.
fn alloc_mem(stream: &Arc<CudaStream>, counter: &Arc<AtomicUsize>, bytes: usize, op: &'static str) -> Result<CudaMem> {
    let n = bytes.max(4).checked_next_multiple_of(4).ok_or(KernelError::Overflow { what: "allocation size" })?;
    // SAFETY: the memory is written (zeroed, uploaded or computed) before anything reads it.
    let slice = unsafe { stream.alloc::<u8>(n) }.map_err(|e| driver_err(op, e))?;
    let ptr = slice.device_ptr(stream).0;
    counter.fetch_add(n, Ordering::Relaxed);
    Ok(CudaMem { slice, ptr, bytes: n, counter: counter.clone() })
}

impl Drop for CudaBackend {
    /// Lets the queued work finish before the modules it runs are unloaded.
    fn drop(&mut self) {
        let _ = self.synchronize();
    }
}

/// A buffer range check: `need` bytes of `b`.
pub(crate) fn check_len(op: &'static str, what: &str, b: &DeviceBuffer, need: usize) -> Result<()> {
    if b.bytes() < need {
        return Err(KernelError::Shape {
            op,
            expected: format!("{what} of at least {need} bytes"),
            got: format!("{} bytes", b.bytes()),
        });
    }
    Ok(())
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn allocated_bytes(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let mem = self.raw_alloc(bytes, "alloc")?;
        // SAFETY: `mem` holds `mem.bytes` bytes, queued on our stream.
        unsafe { drv::memset_d8_async(mem.ptr, 0, mem.bytes, self.stream.cu_stream()) }.map_err(|e| driver_err("alloc", e))?;
        Ok(DeviceBuffer::new(bytes, mem))
    }

    fn upload(&self, data: &[u8]) -> Result<DeviceBuffer> {
        let mem = self.raw_alloc(data.len(), "upload")?;
        if mem.bytes > data.len() {
            // SAFETY: the padding after the data, inside the allocation.
            unsafe { drv::memset_d8_async(mem.ptr + data.len() as u64, 0, mem.bytes - data.len(), self.stream.cu_stream()) }
                .map_err(|e| driver_err("upload", e))?;
        }
        if !data.is_empty() {
            // SAFETY: `data.len()` bytes fit the allocation; a copy from pageable memory has
            // read `data` when the call returns.
            unsafe { drv::memcpy_htod_async(mem.ptr, data, self.stream.cu_stream()) }.map_err(|e| driver_err("upload", e))?;
        }
        Ok(DeviceBuffer::new(data.len(), mem))
    }

    fn write(&self, dst: &DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        check_len("write", "destination", dst, offset + data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let ptr = self.ptr(dst, "write")?;
        self.bind("write")?;
        // SAFETY: in bounds (checked); pageable source, read before the call returns.
        unsafe { drv::memcpy_htod_async(ptr + offset as u64, data, self.stream.cu_stream()) }.map_err(|e| driver_err("write", e))
    }

    fn read(&self, src: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        check_len("read", "source", src, offset + out.len())?;
        let ptr = self.ptr(src, "read")?;
        self.bind("read")?;
        if !out.is_empty() {
            // SAFETY: in bounds (checked); the stream is synchronized before `out` is used.
            unsafe { drv::memcpy_dtoh_async(out, ptr + offset as u64, self.stream.cu_stream()) }
                .map_err(|e| driver_err("read", e))?;
        }
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.bind("synchronize")?;
        self.stream.synchronize().map_err(|e| driver_err("synchronize", e))?;
        self.check_status()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        self.bind("memory").ok()?;
        let (free, total) = self.ctx.mem_get_info().ok()?;
        Some((free as u64, total as u64))
    }

    fn copy(&self, src: &DeviceBuffer, src_off: usize, dst: &DeviceBuffer, dst_off: usize, n: usize) -> Result<()> {
        ops::call_copy(self, src, src_off, dst, dst_off, n)
    }

    fn matmul(&self, w: &DeviceMat, x: &DeviceBuffer, n_tokens: usize, out: &DeviceBuffer) -> Result<()> {
        ops::call_matmul(self, w, x, n_tokens, out)
    }

    fn matvec_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, x: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        ops::call_matvec_rows(self, w, rows, n_rows, x, out)
    }

    fn axpy_rows(&self, w: &DeviceMat, rows: &DeviceBuffer, n_rows: usize, coef: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        ops::call_axpy_rows(self, w, rows, n_rows, coef, out)
    }

    fn rms_norm(&self, x: &DeviceBuffer, weight: &DeviceBuffer, n_rows: usize, eps: f32, out: &DeviceBuffer) -> Result<()> {
        ops::call_rms_norm(self, x, weight, n_rows, eps, out)
    }

    fn rope(&self, x: &DeviceBuffer, cos: &DeviceBuffer, sin: &DeviceBuffer, n_tokens: usize, n_heads: usize, head_dim: usize, interleaved: bool) -> Result<()> {
        ops::call_rope(self, x, cos, sin, n_tokens, n_heads, head_dim, interleaved)
    }

    fn attention(&self, shape: &AttnShape, n_tokens: usize, q: &DeviceBuffer, k: &DeviceBuffer, v: &DeviceBuffer, out: &DeviceBuffer) -> Result<()> {
        ops::call_attention(self, shape, n_tokens, q, k, v, out)
    }

    fn elementwise(&self, op: Elementwise, a: &DeviceBuffer, b: &DeviceBuffer, n: usize) -> Result<()> {
        ops::call_elementwise(self, op, a, b, n)
    }

    fn supports(&self, dtype: DType) -> bool {
        ops::kernel_suffix(dtype).is_some()
    }
}
