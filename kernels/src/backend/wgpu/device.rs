//! The wgpu device under the backend: memory (buffers split into pieces, every byte counted),
//! reads and writes, and queueing kernel dispatches with their parameters.
//!
//! Ordering: ops are recorded into one pending command encoder, submitted by `flush` (the
//! caller's cue that it will compute on the CPU meanwhile), every `AUTO_SUBMIT` dispatches, and
//! before `write` (a queue write, which must land after the ops queued before it), `read` and
//! `synchronize` (which then wait).
//!
//! Parameters: each dispatch takes the next slot of one uniform ring buffer; the parameters of
//! the pending dispatches (consecutive slots) are written by one queue write just before their
//! submission (one wgpu staging copy per submission, not per op). The ring starts over only
//! after a submission, so no dispatch sees another's parameters.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::pipelines::{Kernel, Pipelines};
use crate::backend::DeviceBuffer;
use crate::{KernelError, Result};

/// Bytes of one dispatch's parameters (16 words).
pub(super) const PARAM_BYTES: usize = 64;
/// Slots in the parameter ring (16 KiB at the common 256-byte uniform offset alignment).
const RING_SLOTS: u64 = 64;
/// Largest buffer `read` copies through (made for each read, as large as the read up to this).
const STAGING_BYTES: u64 = 4 << 20;
/// Dispatches recorded before the pending encoder is submitted without being asked.
const AUTO_SUBMIT: usize = 48;
/// Workgroups along one dispatch dimension (wgpu's default limit).
const MAX_GROUPS_X: u32 = 65535;

pub(super) fn device_err(op: &'static str, problem: impl Into<String>) -> KernelError {
    KernelError::Device { backend: "wgpu".into(), op, problem: problem.into() }
}

pub(super) fn short(op: &'static str, what: &str, need: usize, have: usize) -> KernelError {
    KernelError::Shape { op, expected: format!("{what} of at least {need} bytes"), got: format!("{have} bytes") }
}

fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// A wgpu buffer and its share of the count of device memory, given back on drop.
pub(super) struct Piece {
    pub buffer: wgpu::Buffer,
    /// First byte of the logical buffer this piece holds.
    pub start: usize,
    /// Logical bytes held (the wgpu buffer is padded to a multiple of 4).
    pub len: usize,
    /// First matrix row held (pieces of a matrix hold whole rows).
    pub row0: usize,
    /// Rows held (0 for a buffer that is not a matrix).
    pub rows: usize,
    counted: u64,
    counter: Arc<AtomicUsize>,
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.counted as usize, Ordering::Relaxed);
    }
}

/// The handle inside a [`DeviceBuffer`]: one piece, or for a matrix larger than one storage
/// binding, several pieces of whole rows.
pub(super) struct GpuBuf {
    pub pieces: Vec<Piece>,
}

/// One dispatch: a kernel, its parameters, its storage bindings (binding 1 on, in order), and a
/// number of workgroups (spread over two dimensions past 65535; kernels compute the linear id).
pub(super) struct Dispatch<'a> {
    pub kernel: Kernel,
    pub params: [u32; PARAM_BYTES / 4],
    pub bindings: Vec<wgpu::BufferBinding<'a>>,
    pub groups: Groups,
}

#[derive(Clone, Copy)]
pub(super) enum Groups {
    /// A count, laid out over x (and y past the limit).
    Linear(u32),
    /// An explicit (x, y) grid.
    Grid(u32, u32),
}

impl Groups {
    fn dims(self) -> (u32, u32) {
        match self {
            Groups::Linear(n) if n <= MAX_GROUPS_X => (n, 1),
            Groups::Linear(n) => (MAX_GROUPS_X, n.div_ceil(MAX_GROUPS_X)),
            Groups::Grid(x, y) => (x, y),
        }
    }
}

/// Parameters from a list of words (f32s as `to_bits`).
pub(super) fn params(words: &[u32]) -> [u32; PARAM_BYTES / 4] {
    let mut p = [0u32; PARAM_BYTES / 4];
    p[..words.len()].copy_from_slice(words);
    p
}

/// The parameter ring and the commands recorded but not yet submitted.
struct Pending {
    ring: wgpu::Buffer,
    stride: u64,
    next_slot: u64,
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    /// The pending dispatches' parameters, one `stride` per slot from `first_slot`.
    params: Vec<u8>,
    first_slot: u64,
}

pub(super) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Largest binding, in bytes: the storage-binding limit (at most 2 GiB, so byte offsets fit
    /// the shaders' u32s), a multiple of 4.
    pub max_binding: usize,
    /// Largest piece of a matrix: `max_binding` unless capped (tests split small matrices).
    pub max_piece: usize,
    max_buffer: u64,
    allocated: Arc<AtomicUsize>,
    /// The first error wgpu reported outside a call (validation, out of memory, device lost).
    errors: Arc<Mutex<Option<String>>>,
    pipelines: Pipelines,
    pending: Mutex<Pending>,
    /// (2) u32: where `status` is copied to be read.
    status_staging: Mutex<wgpu::Buffer>,
    /// (1) u32: the largest bad row index + 1 a row-list kernel met, 0 when none.
    status: wgpu::Buffer,
    /// Whether a row-list kernel ran since `status` was last read.
    status_dirty: AtomicBool,
    _internal: Vec<Piece>, // the counted share of the ring and the status buffers
}

impl Gpu {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let limits = device.limits();
        let max_piece = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size).min(1 << 31) / 4 * 4;
        let errors = Arc::new(Mutex::new(None::<String>));
        let sink = errors.clone();
        device.on_uncaptured_error(Box::new(move |e| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
            }
        });
        let allocated = Arc::new(AtomicUsize::new(0));
        let make = |label, size: u64, usage| {
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
        };
        use wgpu::BufferUsages as U;
        let stride = (limits.min_uniform_buffer_offset_alignment as u64).max(PARAM_BYTES as u64);
        let ring = make("ember params ring", stride * RING_SLOTS, U::UNIFORM | U::COPY_DST);
        let status_staging = make("ember status staging", 8, U::MAP_READ | U::COPY_DST);
        let status = make("ember row status", 8, U::STORAGE | U::COPY_SRC | U::COPY_DST);
        let internal = [&ring, &status_staging, &status]
            .into_iter()
            .map(|b| counted(b.clone(), 0, b.size() as usize, &allocated))
            .collect();
        Self {
            pipelines: Pipelines::new(),
            device,
            queue,
            max_binding: max_piece as usize,
            max_piece: max_piece as usize,
            max_buffer: limits.max_buffer_size,
            allocated,
            errors,
            pending: Mutex::new(Pending { ring, stride, next_slot: 0, encoder: None, dispatches: 0, params: Vec::new(), first_slot: 0 }),
            status_staging: Mutex::new(status_staging),
            status,
            status_dirty: AtomicBool::new(false),
            _internal: internal,
        }
    }

    pub fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// A piece of `len` logical bytes (padded to 4), zeroed, or holding `data`.
    fn piece(&self, op: &'static str, start: usize, len: usize, data: Option<&[u8]>) -> Result<Piece> {
        let size = round4(len.max(4) as u64);
        if size > self.max_buffer {
            return Err(device_err(op, format!("a buffer of {len} bytes exceeds the adapter's max_buffer_size {}", self.max_buffer)));
        }
        use wgpu::BufferUsages as U;
        let buffer = self.create(op, size, U::STORAGE | U::COPY_SRC | U::COPY_DST, data.is_some())?;
        if let Some(data) = data {
            buffer.slice(..).get_mapped_range_mut()[..data.len()].copy_from_slice(data);
            buffer.unmap();
        }
        self.check_errors(op)?;
        Ok(counted(buffer, start, len, &self.allocated))
    }

    /// A wgpu buffer, or the error that made it fail: a failed buffer must not be mapped (wgpu
    /// panics there), so its error is caught here. Error scopes are per device: the op lock keeps
    /// other threads' errors out of them (pipelines are built under it too).
    fn create(&self, op: &'static str, size: u64, usage: wgpu::BufferUsages, mapped_at_creation: bool) -> Result<wgpu::Buffer> {
        let guard = self.lock(op)?;
        self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation });
        let invalid = pollster::block_on(self.device.pop_error_scope());
        let out_of_memory = pollster::block_on(self.device.pop_error_scope());
        drop(guard);
        match out_of_memory.or(invalid) {
            Some(e) => Err(device_err(op, format!("a buffer of {size} bytes: {e}"))),
            None => Ok(buffer),
        }
    }

    /// One buffer of `len` bytes, zeroed or holding `data`.
    pub fn buffer(&self, op: &'static str, len: usize, data: Option<&[u8]>) -> Result<DeviceBuffer> {
        let piece = self.piece(op, 0, len, data)?;
        Ok(DeviceBuffer::new(len, GpuBuf { pieces: vec![piece] }))
    }

    /// `rows` rows of `row_bytes` from `data`, in pieces of whole rows no larger than a storage
    /// binding (a multiple of 4 rows each, so every piece starts 4-byte aligned).
    pub fn matrix(&self, op: &'static str, data: &[u8], rows: usize, row_bytes: usize) -> Result<DeviceBuffer> {
        let per = self.max_piece.checked_div(row_bytes).map_or(rows.max(1), |n| n / 4 * 4);
        if per == 0 {
            return Err(device_err(op, format!("four rows of {row_bytes} bytes exceed the storage binding limit of {} bytes", self.max_piece)));
        }
        let mut pieces = Vec::new();
        let mut row0 = 0;
        while row0 < rows || pieces.is_empty() {
            let n = per.min(rows - row0);
            let (start, len) = (row0 * row_bytes, n * row_bytes);
            let mut piece = self.piece(op, start, len, Some(&data[start..start + len]))?;
            (piece.row0, piece.rows) = (row0, n);
            pieces.push(piece);
            row0 += n;
        }
        Ok(DeviceBuffer::new(data.len(), GpuBuf { pieces }))
    }

    /// The first `need` bytes of `b` (a one-piece buffer of at least `need` bytes) as a binding.
    pub fn bind<'a>(&self, op: &'static str, what: &str, b: &'a DeviceBuffer, need: usize) -> Result<wgpu::BufferBinding<'a>> {
        if b.bytes() < need {
            return Err(short(op, what, need, b.bytes()));
        }
        let piece = match &handle(b, op)?.pieces[..] {
            [one] => one,
            _ => return Err(device_err(op, format!("{what} is a matrix split in pieces, not a plain buffer"))),
        };
        let size = round4(need.max(4) as u64);
        if size > self.max_binding as u64 {
            return Err(device_err(op, format!("{what}: {need} bytes exceed the storage binding limit of {} bytes", self.max_binding)));
        }
        Ok(wgpu::BufferBinding { buffer: &piece.buffer, offset: 0, size: NonZeroU64::new(size) })
    }

    fn lock(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, Pending>> {
        self.pending.lock().map_err(|_| device_err(op, "command encoder lock poisoned"))
    }

    /// Submits the pending commands, if any.
    fn submit(&self, p: &mut Pending) {
        if !p.params.is_empty() {
            self.queue.write_buffer(&p.ring, p.first_slot * p.stride, &p.params);
            p.params.clear();
        }
        if let Some(encoder) = p.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        p.dispatches = 0;
    }

    /// The pending encoder, begun if there is none.
    fn encoder<'p>(&self, p: &'p mut Pending) -> &'p mut wgpu::CommandEncoder {
        p.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ember ops") }))
    }

    /// Starts the recorded work without waiting.
    pub fn flush(&self, op: &'static str) -> Result<()> {
        let mut p = self.lock(op)?;
        self.submit(&mut p);
        drop(p);
        self.check_errors(op)
    }

    /// Records `dispatches` into the pending encoder.
    pub fn run(&self, op: &'static str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        let mut guard = self.lock(op)?;
        let p = &mut *guard;
        if p.next_slot + dispatches.len() as u64 > RING_SLOTS {
            self.submit(p);
            p.next_slot = 0;
        }
        for d in dispatches {
            let (x, y) = d.groups.dims();
            if x == 0 || y == 0 {
                continue;
            }
            let pipeline = self.pipelines.get(&self.device, d.kernel)?;
            if p.params.is_empty() {
                p.first_slot = p.next_slot;
            }
            let offset = p.next_slot * p.stride;
            p.next_slot += 1;
            p.params.extend(d.params.iter().flat_map(|w| w.to_le_bytes()));
            p.params.resize(((p.next_slot - p.first_slot) * p.stride) as usize, 0);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &p.ring,
                    offset,
                    size: NonZeroU64::new(PARAM_BYTES as u64),
                }),
            }];
            for (i, b) in d.bindings.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: wgpu::BindingResource::Buffer(b.clone()) });
            }
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.layout, entries: &entries });
            let mut pass = self.encoder(p).begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op), timestamp_writes: None });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            drop(pass);
            p.dispatches += 1;
        }
        if p.dispatches >= AUTO_SUBMIT {
            self.submit(p);
        }
        drop(guard);
        if dispatches.iter().any(|d| d.kernel.writes_status()) {
            self.status_dirty.store(true, Ordering::Relaxed);
        }
        self.check_errors(op)
    }

    /// The row-status buffer, for the row-list kernels.
    pub fn status_binding(&self) -> wgpu::BufferBinding<'_> {
        self.status.as_entire_buffer_binding()
    }

    /// Copies between two different buffers (f32 elements), queued.
    pub fn copy_between(&self, src: &wgpu::Buffer, src_off: u64, dst: &wgpu::Buffer, dst_off: u64, bytes: u64) -> Result<()> {
        let mut p = self.lock("copy")?;
        self.encoder(&mut p).copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
        drop(p);
        self.check_errors("copy")
    }

    /// Writes `data` at byte `offset` of `dst`, after the ops submitted so far.
    pub fn write(&self, dst: &DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let op = "write";
        if !offset.is_multiple_of(4) {
            return Err(KernelError::Shape { op, expected: "an offset that is a multiple of 4".into(), got: format!("{offset}") });
        }
        let end = offset + data.len();
        if end > dst.bytes() {
            return Err(short(op, "the destination", end, dst.bytes()));
        }
        let mut bytes = data.to_vec();
        if !end.is_multiple_of(4) {
            // The rest of the last word keeps its bytes (those past the buffer's end are padding).
            let keep = (end.next_multiple_of(4)).min(dst.bytes()) - end;
            let mut tail = vec![0u8; keep];
            self.read(dst, end, &mut tail)?;
            bytes.extend_from_slice(&tail);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        let mut pending = self.lock(op)?;
        self.submit(&mut pending);
        for p in &handle(dst, op)?.pieces {
            let (lo, hi) = (offset.max(p.start), (offset + bytes.len()).min(p.start + round4(p.len as u64) as usize));
            if lo < hi {
                self.queue.write_buffer(&p.buffer, (lo - p.start) as u64, &bytes[lo - offset..hi - offset]);
            }
        }
        self.check_errors(op)
    }

    /// Waits for the queued work, then copies `out.len()` bytes of `src` from byte `offset`,
    /// through a staging buffer made for the read (counted while it lives) of up to
    /// `STAGING_BYTES`, a chunk at a time. Reports a bad row index a row-list kernel met since the
    /// last read.
    pub fn read(&self, src: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let op = "read";
        let end = offset + out.len();
        if end > src.bytes() {
            return Err(short(op, "the source", end, src.bytes()));
        }
        let pieces = &handle(src, op)?.pieces;
        let status_staging = self.status_staging.lock().map_err(|_| device_err(op, "staging lock poisoned"))?;
        if out.is_empty() {
            let bad_row = self.fetch(op, &status_staging, None)?;
            return self.report(op, bad_row);
        }
        // The span of whole words to copy, at most STAGING_BYTES at a time.
        let span = ((end.next_multiple_of(4) - offset / 4 * 4) as u64).min(STAGING_BYTES);
        let size = round8(span).max(8);
        let staging = self.create(op, size, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, false)?;
        let _count = counted(staging.clone(), 0, size as usize, &self.allocated);
        let mut pos = offset;
        let mut bad_row = 0;
        while pos < end {
            let Some(p) = pieces.iter().find(|p| pos >= p.start && pos < p.start + p.len) else {
                return Err(device_err(op, format!("byte {pos} lies in no piece of the buffer")));
            };
            let lo = (pos - p.start) as u64 / 4 * 4;
            let hi = round4((end.min(p.start + p.len) - p.start) as u64).min(lo + size);
            bad_row = bad_row.max(self.fetch(op, &status_staging, Some((&p.buffer, lo, hi - lo, &staging)))?);
            let view = staging.slice(..round8(hi - lo)).get_mapped_range();
            let skip = (pos - p.start) - lo as usize;
            let n = (hi as usize - lo as usize - skip).min(end - pos);
            out[pos - offset..pos - offset + n].copy_from_slice(&view[skip..skip + n]);
            drop(view);
            staging.unmap();
            pos += n;
        }
        self.report(op, bad_row)
    }

    /// Waits until every queued op has finished; reports errors.
    pub fn synchronize(&self) -> Result<()> {
        let op = "synchronize";
        let status_staging = self.status_staging.lock().map_err(|_| device_err(op, "staging lock poisoned"))?;
        let bad_row = self.fetch(op, &status_staging, None)?;
        self.report(op, bad_row)
    }

    /// Copies `chunk` (source, offset, bytes, staging buffer) into its staging buffer and, when a
    /// row-list kernel ran, the row status into `status_staging` (clearing it), then waits for
    /// the device. Leaves the chunk's staging buffer mapped. Answers the status read (0: none).
    fn fetch(&self, op: &'static str, status_staging: &wgpu::Buffer, chunk: Option<(&wgpu::Buffer, u64, u64, &wgpu::Buffer)>) -> Result<u32> {
        let with_status = self.status_dirty.swap(false, Ordering::Relaxed);
        let mut pending = self.lock(op)?;
        let encoder = self.encoder(&mut pending);
        if let Some((buffer, offset, bytes, staging)) = chunk {
            encoder.copy_buffer_to_buffer(buffer, offset, staging, 0, bytes);
        }
        if with_status {
            encoder.copy_buffer_to_buffer(&self.status, 0, status_staging, 0, 8);
            encoder.clear_buffer(&self.status, 0, None);
        }
        self.submit(&mut pending);
        drop(pending);
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut mapped = Vec::new();
        if let Some((_, _, bytes, staging)) = chunk {
            mapped.push(staging);
            let r = results.clone();
            staging.map_async(wgpu::MapMode::Read, ..round8(bytes), move |res| r.lock().map(|mut v| v.push(res)).unwrap_or(()));
        }
        if with_status {
            mapped.push(status_staging);
            let r = results.clone();
            status_staging.map_async(wgpu::MapMode::Read, .., move |res| r.lock().map(|mut v| v.push(res)).unwrap_or(()));
        }
        self.device.poll(wgpu::PollType::Wait).map_err(|e| device_err(op, format!("waiting for the device: {e}")))?;
        self.check_errors(op)?;
        let results = results.lock().map_err(|_| device_err(op, "map result lock poisoned"))?;
        if results.len() != mapped.len() || results.iter().any(|r| r.is_err()) {
            for b in mapped {
                b.unmap();
            }
            return Err(device_err(op, format!("mapping the staging buffer failed: {results:?}")));
        }
        let mut bad_row = 0;
        if with_status {
            let view = status_staging.slice(..).get_mapped_range();
            bad_row = u32::from_le_bytes([view[0], view[1], view[2], view[3]]);
            drop(view);
            status_staging.unmap();
        }
        Ok(bad_row)
    }

    fn report(&self, op: &'static str, bad_row: u32) -> Result<()> {
        if bad_row == 0 {
            return Ok(());
        }
        Err(KernelError::Shape {
            op,
            expected: "row indices below the matrix's rows (matvec_rows / axpy_rows queued before this call)".into(),
            got: format!("row {}", bad_row - 1),
        })
    }

    /// The first error wgpu reported since the device was made, if any (it stays: a device that
    /// failed once is not trusted again).
    pub fn check_errors(&self, op: &'static str) -> Result<()> {
        match self.errors.lock() {
            Ok(e) => match &*e {
                Some(msg) => Err(device_err(op, msg.clone())),
                None => Ok(()),
            },
            Err(_) => Err(device_err(op, "error slot lock poisoned")),
        }
    }
}

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn counted(buffer: wgpu::Buffer, start: usize, len: usize, counter: &Arc<AtomicUsize>) -> Piece {
    let size = buffer.size();
    counter.fetch_add(size as usize, Ordering::Relaxed);
    Piece { buffer, start, len, row0: 0, rows: 0, counted: size, counter: counter.clone() }
}

/// This backend's handle of `b`.
pub(super) fn handle<'a>(b: &'a DeviceBuffer, op: &'static str) -> Result<&'a GpuBuf> {
    b.handle::<GpuBuf>(op).map_err(|_| device_err(op, "buffer belongs to another backend"))
}
