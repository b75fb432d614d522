//! The hybrid executor, after PowerInfer (Song et al., SOSP '24, §5 "neuron-aware hybrid
//! inference"): the parts of each layer that the placement put on the GPU run there, the rest on
//! the CPU. In decode, a layer's hot FFN neurons run on the GPU while the CPU computes the cold
//! ones; only the FFN input, the index list and the two partial outputs cross the link, and the
//! partials are merged by one add.
//!
//! The residual stream and the norms stay on the CPU (a `dim`-float vector per layer crosses
//! the link each way). Prompts go through in chunks of [`GPU_BATCH`] tokens, so the GPU scratch
//! has a fixed size the placement counts; a prompt chunk runs a partly-hot FFN on the CPU
//! (dense products over every neuron), a wholly-hot one on the GPU.

use std::sync::{Arc, Mutex};

use ember_kernels::backend::{AttnShape, Backend, DeviceBuffer, DeviceMat, Elementwise, GluAct};
use ember_kernels::cpu::sparse::{matvec_rows, RowsProduct};
use ember_kernels::cpu::{needs_q8, ops, Input};
use ember_kernels::quant::q8::quantize_q8;
use ember_kernels::quant::quantize::quantize_row;
use ember_kernels::quant::{dequantize_row, DType};
use ember_kernels::MatRef;
use ember_predictor::Criterion;

use super::{Layer, Model, Scratch};
use crate::config::Activation;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::placement::{Device, Placement, GPU_BATCH};
use crate::weights::Weight;

/// The model's parts on the GPU, and the scratch buffers its ops share.
pub(crate) struct GpuModel {
    pub backend: Arc<dyn Backend>,
    pub placement: Placement,
    /// Device bytes the placement may use.
    pub budget: u64,
    layers: Vec<GpuLayer>,
    output: Option<DeviceMat>, // (vocab, dim)
    /// One forward pass at a time uses the GPU (sessions take turns).
    scratch: Mutex<GpuScratch>,
}

struct GpuLayer {
    attn: Option<GpuAttn>,
    ffn: GpuFfn,
}

struct GpuAttn {
    wq: DeviceMat,               // (n_heads*head_dim, dim)
    wk: DeviceMat,               // (n_kv_heads*head_dim, dim)
    wv: DeviceMat,               // (n_kv_heads*head_dim, dim)
    wo: DeviceMat,               // (dim, n_heads*head_dim)
    bq: Option<DeviceBuffer>,    // (n_heads*head_dim)
    bk: Option<DeviceBuffer>,    // (n_kv_heads*head_dim)
    bv: Option<DeviceBuffer>,    // (n_kv_heads*head_dim)
}

enum GpuFfn {
    Cpu,
    /// Every neuron on the GPU, the matrices as in the model file.
    Whole { gate: DeviceMat, up: DeviceMat, down: DeviceMat }, // (ffn, dim), (ffn, dim), (dim, ffn)
    Hot(HotFfn),
}

/// A layer's hot neurons on the GPU (row-column bundling: neuron `k` of the list is row `k` of
/// each matrix).
struct HotFfn {
    gate: DeviceMat, // (m, dim) the hot rows of gate, copied exactly
    up: DeviceMat,   // (m, dim) the hot rows of up
    down: DeviceMat, // (m, dim) Q8_0: each hot neuron's down column
    /// (ffn) position of neuron j in the hot list, or `u32::MAX` when it is cold.
    slot: Vec<u32>,
    /// Neurons left to the CPU, ascending.
    cold: Vec<u32>,
}

/// Device scratch, `GPU_BATCH` tokens wide (`placement::scratch_bytes` counts exactly these).
struct GpuScratch {
    h: DeviceBuffer,        // (b, dim)
    q: DeviceBuffer,        // (b, n_heads*head_dim)
    k: DeviceBuffer,        // (b, kv_dim)
    v: DeviceBuffer,        // (b, kv_dim)
    attn: DeviceBuffer,     // (b, n_heads*head_dim)
    attn_out: DeviceBuffer, // (b, dim)
    cos: DeviceBuffer,      // (b, head_dim/2)
    sin: DeviceBuffer,      // (b, head_dim/2)
    gate: DeviceBuffer,     // (b, ffn)
    up: DeviceBuffer,       // (b, ffn)
    ffn_out: DeviceBuffer,  // (b, dim)
    idx: DeviceBuffer,      // (ffn) u32: a token's predicted hot neurons
    iota: DeviceBuffer,     // (ffn) u32: 0, 1, 2, …
    logits: Option<DeviceBuffer>, // (b, vocab) when the output matrix is on the GPU
}

/// One sequence's keys and values on the GPU, for the layers whose attention runs there.
pub(crate) struct GpuKv {
    k: Vec<Option<DeviceBuffer>>, // per layer (ctx, kv_dim)
    v: Vec<Option<DeviceBuffer>>, // per layer (ctx, kv_dim)
}

fn glu_act(a: Activation) -> GluAct {
    match a {
        Activation::Silu => GluAct::Silu,
        Activation::Relu => GluAct::Relu,
        Activation::Gelu => GluAct::Gelu,
    }
}

impl GpuModel {
    /// Moves the parts `placement` names to the device (only here do weights move).
    pub(crate) fn load(model: &Model, backend: Arc<dyn Backend>, placement: Placement, budget: u64) -> Result<GpuModel> {
        let c = &model.config;
        let b = &*backend;
        let (q_dim, kv_dim, bt) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, GPU_BATCH);
        let f = |n: usize| b.alloc(4 * n);
        let output_on_gpu = placement.output == Device::Gpu;
        let scratch = GpuScratch {
            h: f(bt * c.dim)?,
            q: f(bt * q_dim)?,
            k: f(bt * kv_dim)?,
            v: f(bt * kv_dim)?,
            attn: f(bt * q_dim)?,
            attn_out: f(bt * c.dim)?,
            cos: f(bt * c.head_dim / 2)?,
            sin: f(bt * c.head_dim / 2)?,
            gate: f(bt * c.ffn_dim)?,
            up: f(bt * c.ffn_dim)?,
            ffn_out: f(bt * c.dim)?,
            idx: f(c.ffn_dim)?,
            iota: b.upload_u32(&(0..c.ffn_dim as u32).collect::<Vec<_>>())?,
            logits: if output_on_gpu { Some(f(bt * c.vocab_size)?) } else { None },
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for (layer, lp) in model.layers.iter().zip(&placement.layers) {
            let attn = match lp.attention {
                Device::Gpu => Some(load_attn(b, layer)?),
                Device::Cpu => None,
            };
            let ffn = if lp.whole_ffn {
                GpuFfn::Whole { gate: mat(b, &layer.w_gate)?, up: mat(b, &layer.w_up)?, down: mat(b, &layer.w_down)? }
            } else if lp.hot.is_empty() {
                GpuFfn::Cpu
            } else {
                GpuFfn::Hot(load_hot(b, layer, &lp.hot, c.ffn_dim)?)
            };
            layers.push(GpuLayer { attn, ffn });
        }
        let output = if output_on_gpu { Some(mat(b, &model.output)?) } else { None };
        let gpu = GpuModel { backend, placement, budget, layers, output, scratch: Mutex::new(scratch) };
        let used = gpu.backend.allocated_bytes() as u64;
        if used > budget {
            return Err(over_budget(used, budget, "the model's parts"));
        }
        Ok(gpu)
    }

    /// Layers whose attention (and KV cache) is on the GPU.
    fn kv_layers(&self) -> impl Iterator<Item = bool> + '_ {
        self.layers.iter().map(|l| l.attn.is_some())
    }

    /// Gives `cache` its device keys and values on first use, within the budget.
    fn ensure_kv(&self, cache: &mut KvCache, kv_dim: usize) -> Result<()> {
        if cache.gpu.is_some() {
            return Ok(());
        }
        let bytes = 4 * cache.ctx() * kv_dim;
        let need = 2 * bytes * self.kv_layers().filter(|g| *g).count();
        let used = self.backend.allocated_bytes();
        if (used + need) as u64 > self.budget {
            return Err(over_budget((used + need) as u64, self.budget, "another sequence's KV cache"));
        }
        let alloc = |on: bool| if on { self.backend.alloc(bytes).map(Some) } else { Ok(None) };
        let k = self.kv_layers().map(alloc).collect::<std::result::Result<Vec<_>, _>>()?;
        let v = self.kv_layers().map(alloc).collect::<std::result::Result<Vec<_>, _>>()?;
        cache.gpu = Some(GpuKv { k, v });
        Ok(())
    }
}

fn over_budget(used: u64, budget: u64, what: &str) -> EngineError {
    EngineError::Param {
        name: "vram",
        problem: format!("{what} would take the GPU to {used} bytes, over the budget of {budget} bytes"),
    }
}

fn mat(b: &dyn Backend, w: &Weight) -> Result<DeviceMat> {
    Ok(b.upload_mat(w.mat())?)
}

fn load_attn(b: &dyn Backend, l: &Layer) -> Result<GpuAttn> {
    let bias = |v: &Option<Vec<f32>>| -> Result<Option<DeviceBuffer>> { Ok(v.as_deref().map(|v| b.upload_f32(v)).transpose()?) };
    Ok(GpuAttn {
        wq: mat(b, &l.wq)?,
        wk: mat(b, &l.wk)?,
        wv: mat(b, &l.wv)?,
        wo: mat(b, &l.wo)?,
        bq: bias(&l.bq)?,
        bk: bias(&l.bk)?,
        bv: bias(&l.bv)?,
    })
}

/// The hot neurons' gate and up rows (exact copies) and their down columns as Q8_0 rows.
fn load_hot(b: &dyn Backend, l: &Layer, hot: &[u32], ffn: usize) -> Result<HotFfn> {
    let gather = |w: &Weight| -> Result<DeviceMat> {
        let m = w.mat();
        let bytes: Vec<u8> = hot.iter().flat_map(|&j| m.row(j as usize).iter().copied()).collect();
        Ok(b.upload_mat(MatRef::new(m.dtype, hot.len(), m.cols, &bytes)?)?)
    };
    let down = l.w_down.mat(); // (dim, ffn)
    let mut dense = vec![0.0f32; down.rows * down.cols];
    for (r, row) in dense.chunks_mut(down.cols).enumerate() {
        dequantize_row(down.dtype, down.row(r), row)?;
    }
    let mut col = vec![0.0f32; down.rows];
    let mut down_t = Vec::new();
    for &j in hot {
        for (r, v) in col.iter_mut().enumerate() {
            *v = dense[r * down.cols + j as usize];
        }
        down_t.extend(quantize_row(DType::Q8_0, &col)?);
    }
    let down_t = b.upload_mat(MatRef::new(DType::Q8_0, hot.len(), down.rows, &down_t)?)?;
    let mut slot = vec![u32::MAX; ffn];
    for (k, &j) in hot.iter().enumerate() {
        slot[j as usize] = k as u32;
    }
    let cold = (0..ffn as u32).filter(|&j| slot[j as usize] == u32::MAX).collect();
    Ok(HotFfn { gate: gather(&l.w_gate)?, up: gather(&l.w_up)?, down: down_t, slot, cold })
}

impl Model {
    /// [`Model::forward`] with the GPU: chunks of `GPU_BATCH` tokens, each through every layer.
    pub(super) fn forward_gpu<'c>(&self, g: &GpuModel, tokens: &[u32], cache: &'c mut KvCache, want: super::Logits) -> Result<&'c [f32]> {
        let start_len = cache.len();
        let mut s = std::mem::take(&mut cache.scratch);
        let result = (|| -> Result<()> {
            let gs = g.scratch.lock().map_err(|_| EngineError::Param { name: "gpu", problem: "a forward pass on the GPU panicked earlier".into() })?;
            g.ensure_kv(cache, self.config.n_kv_heads * self.config.head_dim)?;
            let mut all = Vec::new();
            let n_chunks = tokens.len().div_ceil(GPU_BATCH);
            for (i, chunk) in tokens.chunks(GPU_BATCH).enumerate() {
                s.resize(&self.config, chunk.len());
                self.layers_gpu(g, &gs, chunk, cache, &mut s)?;
                let last = i + 1 == n_chunks;
                if want == super::Logits::All || last {
                    self.logits_gpu(g, &gs, &mut s, chunk.len(), want)?;
                    if want == super::Logits::All {
                        all.extend_from_slice(&s.logits);
                    }
                }
                cache.advance(chunk.len());
            }
            if want == super::Logits::All {
                s.logits = all;
            }
            Ok(())
        })();
        cache.scratch = s;
        if let Err(e) = result {
            cache.truncate(start_len);
            return Err(e);
        }
        Ok(&cache.scratch.logits)
    }

    fn layers_gpu(&self, g: &GpuModel, gs: &GpuScratch, tokens: &[u32], cache: &mut KvCache, s: &mut Scratch) -> Result<()> {
        let eps = self.config.rms_eps;
        let n = tokens.len();
        self.embed(tokens, &mut s.x)?; // (n, dim)
        for (l, (layer, gl)) in self.layers.iter().zip(&g.layers).enumerate() {
            super::rms_norm_rows(&s.x, &layer.attn_norm, eps, &mut s.h);
            match &gl.attn {
                Some(a) => self.attention_gpu(g, gs, l, a, n, cache, s)?,
                None => self.attention(l, layer, n, cache, s)?,
            }
            ops::add_assign(&mut s.x, &s.attn_out);
            super::rms_norm_rows(&s.x, &layer.ffn_norm, eps, &mut s.h);
            let t0 = std::time::Instant::now();
            match &gl.ffn {
                GpuFfn::Whole { gate, up, down } => self.ffn_whole_gpu(g, gs, (gate, up, down), n, s)?,
                GpuFfn::Hot(hot) if n == 1 => self.ffn_hybrid(g, gs, l, layer, hot, s)?,
                _ => self.ffn(l, layer, n, s, &mut None)?,
            }
            s.stats.ffn_ns += t0.elapsed().as_nanos() as u64;
            ops::add_assign(&mut s.x, &s.ffn_out);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_gpu(&self, g: &GpuModel, gs: &GpuScratch, l: usize, a: &GpuAttn, n: usize, cache: &mut KvCache, s: &mut Scratch) -> Result<()> {
        let c = &self.config;
        let b = &*g.backend;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        b.write_f32(&gs.h, 0, &s.h[..n * c.dim])?;
        b.matmul(&a.wq, &gs.h, n, &gs.q)?;
        b.matmul(&a.wk, &gs.h, n, &gs.k)?;
        b.matmul(&a.wv, &gs.h, n, &gs.v)?;
        for (buf, bias, width) in [(&gs.q, &a.bq, q_dim), (&gs.k, &a.bk, kv_dim), (&gs.v, &a.bv, kv_dim)] {
            if let Some(bias) = bias {
                b.elementwise(Elementwise::AddRow { width }, buf, bias, n * width)?;
            }
        }
        let start = cache.len();
        self.rope.tables(start, n, &mut s.cos, &mut s.sin);
        b.write_f32(&gs.cos, 0, &s.cos)?;
        b.write_f32(&gs.sin, 0, &s.sin)?;
        b.rope(&gs.q, &gs.cos, &gs.sin, n, c.n_heads, hd, self.rope.interleaved)?;
        b.rope(&gs.k, &gs.cos, &gs.sin, n, c.n_kv_heads, hd, self.rope.interleaved)?;
        let kv = cache.gpu.as_ref().ok_or(EngineError::Param { name: "gpu", problem: "no device KV cache".into() })?;
        let (kc, vc) = match (&kv.k[l], &kv.v[l]) {
            (Some(k), Some(v)) => (k, v),
            _ => return Err(EngineError::Param { name: "gpu", problem: format!("layer {l} has no device KV cache") }),
        };
        b.copy(&gs.k, 0, kc, start * kv_dim, n * kv_dim)?;
        b.copy(&gs.v, 0, vc, start * kv_dim, n * kv_dim)?;
        let shape = AttnShape { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: hd, start };
        b.attention(&shape, n, &gs.q, kc, vc, &gs.attn)?;
        b.matmul(&a.wo, &gs.attn, n, &gs.attn_out)?;
        b.read_f32(&gs.attn_out, 0, &mut s.attn_out[..n * c.dim])?;
        Ok(())
    }

    fn ffn_whole_gpu(&self, g: &GpuModel, gs: &GpuScratch, (gate, up, down): (&DeviceMat, &DeviceMat, &DeviceMat), n: usize, s: &mut Scratch) -> Result<()> {
        let (dim, ffn) = (self.config.dim, self.config.ffn_dim);
        let b = &*g.backend;
        b.write_f32(&gs.h, 0, &s.h[..n * dim])?;
        b.matmul(gate, &gs.h, n, &gs.gate)?;
        b.matmul(up, &gs.h, n, &gs.up)?;
        b.elementwise(Elementwise::Glu(glu_act(self.config.activation)), &gs.gate, &gs.up, n * ffn)?;
        b.matmul(down, &gs.gate, n, &gs.ffn_out)?;
        b.read_f32(&gs.ffn_out, 0, &mut s.ffn_out[..n * dim])?;
        s.stats.total += (n * ffn) as u64;
        s.stats.kept += (n * ffn) as u64;
        s.stats.gate_up_rows += (2 * n * ffn) as u64;
        Ok(())
    }

    /// One token: the hot neurons (the predicted ones, with a predictor) queued on the GPU, the
    /// cold ones computed on the CPU meanwhile, the GPU's partial output added.
    fn ffn_hybrid(&self, g: &GpuModel, gs: &GpuScratch, l: usize, layer: &Layer, hot: &HotFfn, s: &mut Scratch) -> Result<()> {
        let b = &*g.backend;
        let dim = self.config.dim;
        let act = glu_act(self.config.activation);
        let sparse = self.sparse.as_ref().map(|sp| (sp.criterion, &sp.layers[l]));
        if let Some((Criterion::Input, sl)) = sparse {
            // Both devices see the input with its small channels zeroed, as prefill does.
            sl.mask_input(&mut s.h[..dim], |_, _| {});
        }
        b.write_f32(&gs.h, 0, &s.h[..dim])?;
        let predictor = sparse.and_then(|(c, sl)| sl.predictor.as_ref().filter(|_| c == Criterion::Predictor));
        let sp = &mut s.sp;
        sp.hot_pos.clear();
        sp.cold.clear();
        let on_gpu = match predictor {
            Some(p) => {
                p.predict(&s.h, &mut sp.predict, &mut sp.cand);
                for &j in &sp.cand {
                    match hot.slot[j as usize] {
                        u32::MAX => sp.cold.push(j),
                        k => sp.hot_pos.push(k),
                    }
                }
                let k = sp.hot_pos.len();
                if k > 0 {
                    b.write_u32(&gs.idx, 0, &sp.hot_pos)?;
                    b.matvec_rows(&hot.gate, &gs.idx, k, &gs.h, &gs.gate)?;
                    b.matvec_rows(&hot.up, &gs.idx, k, &gs.h, &gs.up)?;
                    b.elementwise(Elementwise::Glu(act), &gs.gate, &gs.up, k)?;
                    b.axpy_rows(&hot.down, &gs.idx, k, &gs.gate, &gs.ffn_out)?;
                }
                k
            }
            None => {
                let m = hot.gate.rows;
                b.matmul(&hot.gate, &gs.h, 1, &gs.gate)?;
                b.matmul(&hot.up, &gs.h, 1, &gs.up)?;
                b.elementwise(Elementwise::Glu(act), &gs.gate, &gs.up, m)?;
                b.axpy_rows(&hot.down, &gs.iota, m, &gs.gate, &gs.ffn_out)?;
                sp.cold.extend_from_slice(&hot.cold);
                m
            }
        };
        b.flush()?;
        let threshold = sparse.map(|(_, sl)| sl.threshold);
        self.ffn_cold(layer, sparse.map(|(_, sl)| sl), threshold, s)?;
        if on_gpu > 0 {
            s.sp.gpu_out.resize(dim, 0.0);
            b.read_f32(&gs.ffn_out, 0, &mut s.sp.gpu_out)?;
            ops::add_assign(&mut s.ffn_out[..dim], &s.sp.gpu_out);
        }
        let ffn = self.config.ffn_dim as u64;
        s.stats.total += ffn;
        s.stats.kept += (on_gpu + s.sp.idx.len()) as u64;
        s.stats.gate_up_rows += 2 * (on_gpu + s.sp.cold.len()) as u64;
        Ok(())
    }

    /// The CPU's part of a hybrid FFN token: h over the neurons in `s.sp.cold` (ReLU: up only
    /// where gate > 0), kept where |h| > `threshold`, then `down` over them — from the
    /// per-neuron copy when a sparse setting has one, else the dense `down` with every other
    /// neuron zero. Leaves `s.ffn_out` = the cold neurons' contribution.
    fn ffn_cold(&self, layer: &Layer, sl: Option<&crate::sparsity::SparseLayer>, threshold: Option<f32>, s: &mut Scratch) -> Result<()> {
        let (dim, act) = (self.config.dim, self.config.activation);
        let sp = &mut s.sp;
        sp.idx.clear();
        sp.coef.clear();
        if sp.cold.is_empty() {
            s.ffn_out[..dim].fill(0.0);
            return Ok(());
        }
        let (wg, wu) = (layer.w_gate.mat(), layer.w_up.mat());
        let quantize = needs_q8(&wg) || needs_q8(&wu);
        if quantize {
            quantize_q8(&s.h[..dim], &mut s.h_q8);
        }
        let input = Input { x: &s.h[..dim], q8: quantize.then_some(&s.h_q8), n_tokens: 1 };
        sp.cg.resize(sp.cold.len(), 0.0);
        let sparse = sl.zip(self.sparse.as_ref()).map(|(sl, sp)| (sp.criterion, sl));
        if let Some(t) = super::ffn::gate_first(act, sparse) {
            matvec_rows(&mut [RowsProduct { w: wg, out: &mut sp.cg }], &sp.cold, input)?;
            // Keep the neurons whose |act(gate)| passes, in place (decode allocates nothing).
            let mut kept = 0;
            for i in 0..sp.cold.len() {
                if super::ffn::activate(act, sp.cg[i]).abs() > t {
                    (sp.cold[kept], sp.cg[kept]) = (sp.cold[i], sp.cg[i]);
                    kept += 1;
                }
            }
            sp.cold.truncate(kept);
            sp.cg.truncate(kept);
            sp.cu.resize(kept, 0.0);
            matvec_rows(&mut [RowsProduct { w: wu, out: &mut sp.cu }], &sp.cold, input)?;
        } else {
            sp.cu.resize(sp.cold.len(), 0.0);
            matvec_rows(&mut [RowsProduct { w: wg, out: &mut sp.cg }, RowsProduct { w: wu, out: &mut sp.cu }], &sp.cold, input)?;
        }
        for ((&j, g), u) in sp.cold.iter().zip(&sp.cg).zip(&sp.cu) {
            let h = super::ffn::activate(act, *g) * u;
            if threshold.is_none_or(|t| h.abs() > t) {
                sp.idx.push(j);
                sp.coef.push(h);
            }
        }
        self.down_kept(layer, sl, s)
    }

    fn logits_gpu(&self, g: &GpuModel, gs: &GpuScratch, s: &mut Scratch, n: usize, want: super::Logits) -> Result<()> {
        let (Some(out), Some(buf)) = (&g.output, &gs.logits) else {
            return self.logits(s, n, want);
        };
        let (dim, vocab) = (self.config.dim, self.config.vocab_size);
        let rows = match want {
            super::Logits::Last => n - 1..n,
            super::Logits::All => 0..n,
        };
        super::rms_norm_rows(&s.x[rows.start * dim..rows.end * dim], &self.output_norm, self.config.rms_eps, &mut s.h);
        let m = rows.len();
        let b = &*g.backend;
        b.write_f32(&gs.h, 0, &s.h[..m * dim])?;
        b.matmul(out, &gs.h, m, buf)?;
        s.logits.resize(m * vocab, 0.0);
        b.read_f32(buf, 0, &mut s.logits)?;
        Ok(())
    }
}

/// What `Engine::open` asks of the GPU.
pub(crate) struct GpuRequest<'a> {
    pub spec: ember_kernels::backend::DeviceSpec,
    pub vram: Option<u64>,
    pub offload: crate::placement::Offload,
    pub ctx: usize,
    /// Per-neuron activation frequencies `(layers, ffn)` from the profile, when there is one.
    pub frequency: Option<&'a [f32]>,
}

/// Opens the device, plans the placement and moves the GPU's parts there. `Ok(None)` (with a
/// line in `notes` saying why) when the model stays on the CPU: no GPU found, no driver, a
/// device that fails, or a budget too small for anything. A budget over the device's memory is
/// an error.
pub(crate) fn attach(model: &Model, req: &GpuRequest<'_>, notes: &mut Vec<String>) -> Result<Option<GpuModel>> {
    use crate::placement::{Budget, Footprint};
    use ember_kernels::backend::{self, DeviceSpec};
    let backend = match backend::open(req.spec) {
        Ok(Some(b)) => b,
        Ok(None) => {
            if req.spec == DeviceSpec::Auto {
                notes.push("no GPU found: running on the CPU".into());
            }
            return Ok(None);
        }
        Err(e) => {
            notes.push(format!("GPU {} unavailable ({e}): running on the CPU", req.spec));
            return Ok(None);
        }
    };
    let name = backend.name();
    let memory = backend.memory();
    if let (Some(v), Some((_, total))) = (req.vram, memory) {
        if v > total {
            return Err(EngineError::Param { name: "vram", problem: format!("{v} bytes is more than {name} has ({total} bytes)") });
        }
    }
    // Without --vram: what the device has free, less a tenth for the driver and other users;
    // a device that cannot tell gets room for the whole model.
    let vram = req.vram.or(memory.map(|(free, _)| free / 10 * 9)).unwrap_or(u64::MAX);
    // The backend's own resident buffers (parameter rings, scratch) come out of the budget first.
    let own = backend.allocated_bytes() as u64;
    let budget = Budget { vram: vram.saturating_sub(own), ctx: req.ctx, sessions: 1 };
    let fp = Footprint::of(model, &budget);
    let placement = crate::placement::Placement::plan(&fp, req.frequency, &budget, req.offload)?;
    if placement.gpu_bytes == 0 {
        notes.push(format!("{name}: nothing fits in a budget of {vram} bytes: running on the CPU"));
        return Ok(None);
    }
    match GpuModel::load(model, backend, placement, vram) {
        Ok(g) => {
            notes.push(format!("{name}: {} of {} bytes used ({})", g.backend.allocated_bytes(), vram, g.placement.summary()));
            Ok(Some(g))
        }
        Err(e) => {
            notes.push(format!("{name} failed while loading ({e}): running on the CPU"));
            Ok(None)
        }
    }
}
