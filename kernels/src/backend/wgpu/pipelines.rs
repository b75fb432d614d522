//! The compute pipelines, built on first use and kept: one per kernel and, for the weight
//! kernels, per format. A weight kernel's source is `common.wgsl` (byte access), the format's
//! decoder (`formats/*.wgsl`: `dq` for one element, `unit_dot` for 32) and the kernel file; the
//! matvec kernels also take their input's declaration (`x_vec4.wgsl` for the block formats,
//! `x_scalar.wgsl` for the float ones).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::device::device_err;
use crate::quant::DType;
use crate::Result;

/// Every kernel of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kernel {
    /// With the lanes per row (16, 32 or 64).
    Matvec(DType, u32),
    MatvecRows(DType, u32),
    Matmul(DType),
    AxpyRows(DType),
    RmsNorm,
    Rope,
    Attention,
    Elementwise,
    Copy,
}

/// The formats with a decoder in `formats/`: all of [`DType::ALL`].
pub(super) const FORMATS: [DType; 13] = DType::ALL;

fn format_source(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => include_str!("shaders/formats/f32.wgsl"),
        DType::F16 => include_str!("shaders/formats/f16.wgsl"),
        DType::BF16 => include_str!("shaders/formats/bf16.wgsl"),
        DType::Q4_0 => include_str!("shaders/formats/q4_0.wgsl"),
        DType::Q4_1 => include_str!("shaders/formats/q4_1.wgsl"),
        DType::Q5_0 => include_str!("shaders/formats/q5_0.wgsl"),
        DType::Q5_1 => include_str!("shaders/formats/q5_1.wgsl"),
        DType::Q8_0 => include_str!("shaders/formats/q8_0.wgsl"),
        DType::Q2_K => include_str!("shaders/formats/q2_k.wgsl"),
        DType::Q3_K => include_str!("shaders/formats/q3_k.wgsl"),
        DType::Q4_K => include_str!("shaders/formats/q4_k.wgsl"),
        DType::Q5_K => include_str!("shaders/formats/q5_k.wgsl"),
        DType::Q6_K => include_str!("shaders/formats/q6_k.wgsl"),
    }
}

const COMMON: &str = include_str!("shaders/common.wgsl");
const X_VEC4: &str = include_str!("shaders/x_vec4.wgsl");
const X_SCALAR: &str = include_str!("shaders/x_scalar.wgsl");

impl Kernel {
    /// The WGSL module.
    fn source(self) -> String {
        let weights = |dtype: DType, kernel: &str| format!("{COMMON}\n{}\n{kernel}", format_source(dtype));
        // The matvec kernels read x as vec4s where rows are whole blocks of 32.
        let x = |dtype: DType| if dtype.is_quantized() { X_VEC4 } else { X_SCALAR };
        match self {
            Kernel::Matvec(d, _) => weights(d, &format!("{}\n{}", x(d), include_str!("shaders/matvec.wgsl"))),
            Kernel::MatvecRows(d, _) => weights(d, &format!("{}\n{}", x(d), include_str!("shaders/matvec_rows.wgsl"))),
            Kernel::Matmul(d) => weights(d, include_str!("shaders/matmul.wgsl")),
            Kernel::AxpyRows(d) => weights(d, include_str!("shaders/axpy_rows.wgsl")),
            Kernel::RmsNorm => include_str!("shaders/rms_norm.wgsl").into(),
            Kernel::Rope => include_str!("shaders/rope.wgsl").into(),
            Kernel::Attention => include_str!("shaders/attention.wgsl").into(),
            Kernel::Elementwise => include_str!("shaders/elementwise.wgsl").into(),
            Kernel::Copy => include_str!("shaders/copy.wgsl").into(),
        }
    }

    /// Storage bindings 1, 2, …: `true` where read-only (the weights; everything else is
    /// read-write so that one buffer may be bound twice, e.g. an in-place RMSNorm).
    fn storage(self) -> &'static [bool] {
        match self {
            Kernel::Matvec(..) | Kernel::Matmul(_) => &[true, false, false],
            Kernel::MatvecRows(..) | Kernel::AxpyRows(_) => &[true, false, false, false, false],
            Kernel::RmsNorm | Kernel::Rope => &[false, false, false],
            Kernel::Attention => &[false, false, false, false],
            Kernel::Elementwise => &[false, false],
            Kernel::Copy => &[false],
        }
    }

    /// Whether the kernel records bad row indices in the status buffer.
    pub fn writes_status(self) -> bool {
        matches!(self, Kernel::MatvecRows(..) | Kernel::AxpyRows(_))
    }
}

pub(super) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(super) struct Pipelines {
    built: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
}

impl Pipelines {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pipeline of `kernel`, built now if it is the first call. Callers hold the op lock
    /// (`Gpu::run`), which keeps other threads' errors out of the error scope used here.
    pub fn get(&self, device: &wgpu::Device, kernel: Kernel) -> Result<Arc<Pipeline>> {
        let op = "pipeline";
        let mut built = self.built.lock().map_err(|_| device_err(op, "pipeline cache lock poisoned"))?;
        if let Some(p) = built.get(&kernel) {
            return Ok(p.clone());
        }
        let source = kernel.source();
        device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{kernel:?}")),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        }];
        for (i, &read_only) in kernel.storage().iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[&layout],
            push_constant_ranges: &[],
        });
        let constants = match kernel {
            Kernel::Matvec(_, lanes) | Kernel::MatvecRows(_, lanes) => vec![("LANES", lanes as f64)],
            _ => Vec::new(),
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("{kernel:?}")),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(device.pop_error_scope()) {
            return Err(device_err(op, format!("building {kernel:?}: {e}")));
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        built.insert(kernel, p.clone());
        Ok(p)
    }
}
