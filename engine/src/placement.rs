//! Placement: which parts of the model live on the GPU and which on the CPU, for a VRAM budget.
//!
//! [`Placement::plan`] is a pure function of the model's [`Footprint`] (the bytes of each part as
//! the executor allocates them on the GPU, and as the CPU reads them per token), the profile's
//! per-neuron activation frequencies, the [`Budget`] and the [`Offload`] mode. It never exceeds
//! the budget, and every decision records its reason; a placement prints as a table.
//!
//! # Neurons mode (PowerInfer)
//! The value of moving a part to the GPU is the bytes per token the CPU then no longer reads:
//! frequency × CPU bytes for a neuron, the full bytes for attention and the output matrix (read
//! every token). Its cost is its GPU bytes: attention comes with its KV cache (`ctx` positions ×
//! `sessions`), a hot neuron with its gate row, up row and a Q8_0 copy of its `down` column, a
//! layer whose FFN is wholly on the GPU costs gate + up + down as in the file (cheaper than the
//! same neurons one by one), the output matrix with its logits buffer. The scratch buffers come
//! first: a budget below them leaves everything on the CPU. PowerInfer solves this as an integer
//! program; here a greedy pass by value per byte over each layer's concave hull of options, a
//! fill of the bytes left with single neurons, and whole-FFN upgrades, run freely and with the
//! attention parts and output of the most promising splits forced in (see `placement/neurons.rs`).
//! A relaxation of the same problem (LP over the FFN, the whole items enumerated) bounds the
//! optimum from above; [`Coverage`] reports both, so the gap is printed with every plan (under
//! 0.1% on power-law profiles of SmolLM2's shape).
//!
//! # Layers mode (llama.cpp's `-ngl`)
//! Whole layers (attention + KV + whole FFN) from layer 0 up while they fit, then the output
//! matrix if it fits; the rest on the CPU, run in turn.
//!
//! # Speed bound
//! [`Placement::decode_bound`] turns a placement into a bandwidth bound on decode speed for a
//! given [`Hardware`]; its model is in `placement/bound.rs`.
//!
//! # Sizes
//! [`parse_size`] reads `4096`, `512MiB`, `3.5GiB` (binary), `8GB` (decimal, 10^9) and, like
//! llama.cpp and `ls -h`, bare `K`/`M`/`G`/`T` as binary (1.5G = 1.5 GiB).

mod bound;
mod footprint;
mod neurons;

use std::fmt;
use std::str::FromStr;

pub use bound::{Bound, Hardware, Link};
pub use footprint::{pad4, Footprint, LayerFootprint, LayerSizes, Part, WeightSizes};

use crate::error::{EngineError, Result};
use crate::config::ModelConfig;

/// How the model is split between the devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// Attention of chosen layers and the hottest FFN neurons of every layer on the GPU, the
    /// cold neurons on the CPU, both at once (PowerInfer).
    #[default]
    Neurons,
    /// Whole layers on the GPU, the rest on the CPU, run in turn (llama.cpp's `-ngl`).
    Layers,
}

/// Where a part runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Gpu,
    Cpu,
}

/// Tokens the executor runs through the GPU per call; a longer prompt goes in chunks of this
/// many, so the GPU scratch buffers have a fixed size.
pub const GPU_BATCH: usize = 32;

/// Bytes of a Q8_0 row of `n` elements (the per-neuron `down` rows on the GPU).
pub fn q8_0_row_bytes(n: usize) -> u64 {
    (n / 32 * 34) as u64
}

/// Device memory the executor allocates for its scratch buffers (f32, `GPU_BATCH` tokens), exactly:
/// h, q, k, v, attn, attn_out, cos, sin, gate, up, ffn_out, idx and iota (u32, ffn_dim each), and the logits
/// when the output matrix is on the GPU.
pub fn scratch_bytes(c: &ModelConfig, output_on_gpu: bool) -> u64 {
    let (q_dim, kv_dim, b) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, GPU_BATCH);
    let floats = b * c.dim // h
        + b * q_dim * 2    // q, attn
        + b * kv_dim * 2   // k, v
        + b * c.dim * 2    // attn_out, ffn_out
        + b * c.head_dim   // cos, sin: (b, head_dim/2) each
        + b * c.ffn_dim * 2 // gate, up
        + 2 * c.ffn_dim    // idx, iota (u32)
        + if output_on_gpu { b * c.vocab_size } else { 0 };
    4 * floats as u64
}

impl Offload {
    pub fn name(self) -> &'static str {
        match self {
            Offload::Neurons => "neurons",
            Offload::Layers => "layers",
        }
    }
}

impl FromStr for Offload {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Offload, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "neurons" => Ok(Offload::Neurons),
            "layers" => Ok(Offload::Layers),
            _ => Err(format!("unknown offload mode '{s}': expected neurons or layers")),
        }
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Gpu => "GPU",
            Device::Cpu => "CPU",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The budget.

/// What the placement may use on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of device memory.
    pub vram: u64,
    /// Positions each session's KV cache holds (the engine's context length).
    pub ctx: usize,
    /// Sessions whose KV caches live on the GPU at once.
    pub sessions: usize,
}

/// Reads a size: plain bytes (`4096`), binary units (`512KiB`, `512MiB`, `3.5GiB`, `1TiB`),
/// decimal units (`8KB`, `8MB`, `8GB`, `1TB`: powers of 1000), and bare `K`/`M`/`G`/`T` taken as
/// binary like llama.cpp (`1.5G` = 1.5 GiB). Units are case-insensitive; a space may precede them.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    if t.is_empty() {
        return Err("empty size: expected e.g. 4096, 512MiB, 3.5GiB or 8GB".into());
    }
    if t.starts_with('-') {
        return Err(format!("'{s}': a size cannot be negative"));
    }
    if number.is_empty() {
        return Err(format!("'{s}': no number before the unit"));
    }
    let n: f64 = number.parse().map_err(|_| format!("'{s}': '{number}' is not a number"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (expected B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or K, M, G, T as binary)")),
    };
    if mult == 1.0 && n.fract() != 0.0 {
        return Err(format!("'{s}': a byte count must be whole"));
    }
    let bytes = (n * mult).floor();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("'{s}': too large"));
    }
    Ok(bytes as u64)
}

/// Bytes as MiB for people.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Neuron frequencies.

/// Each layer's neurons hottest first, with the running sums of their frequencies.
pub(crate) struct Freqs {
    ffn: usize,
    /// `None`: every neuron active every token (a dense model; neuron j at rank j).
    sorted: Option<Sorted>,
}

struct Sorted {
    order: Vec<u32>,  // (layers, ffn): neuron ids, hottest first (ties: lower id first)
    prefix: Vec<f64>, // (layers, ffn + 1): sum of the first k frequencies in that order
}

impl Freqs {
    /// Checks `frequency` ((layers, ffn), each in [0, 1]) against the footprint.
    pub(crate) fn new(fp: &Footprint, frequency: Option<&[f32]>) -> Result<Freqs> {
        let (layers, ffn) = (fp.layers.len(), fp.ffn_dim);
        let Some(f) = frequency else { return Ok(Freqs { ffn, sorted: None }) };
        if f.len() != layers * ffn {
            return Err(EngineError::Param {
                name: "frequency",
                problem: format!("has {} values; the model needs layers × ffn = {layers} × {ffn}", f.len()),
            });
        }
        if let Some(i) = f.iter().position(|x| !(0.0..=1.0).contains(x)) {
            return Err(EngineError::Param {
                name: "frequency",
                problem: format!("layer {} neuron {}: {} is outside [0, 1]", i / ffn.max(1), i % ffn.max(1), f[i]),
            });
        }
        let mut order = Vec::with_capacity(layers * ffn);
        let mut prefix = Vec::with_capacity(layers * (ffn + 1));
        for row in f.chunks(ffn.max(1)).take(layers) {
            let mut ids: Vec<u32> = (0..ffn as u32).collect();
            ids.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b)));
            let mut sum = 0.0;
            prefix.push(0.0);
            for &j in &ids {
                sum += row[j as usize] as f64;
                prefix.push(sum);
            }
            order.extend(ids);
        }
        Ok(Freqs { ffn, sorted: Some(Sorted { order, prefix }) })
    }

    /// Sum of the `k` largest frequencies of layer `l`.
    pub(crate) fn prefix(&self, l: usize, k: usize) -> f64 {
        match &self.sorted {
            None => k as f64,
            Some(s) => s.prefix[l * (self.ffn + 1) + k],
        }
    }

    /// Frequency of the neuron at `rank` (0 = hottest) of layer `l`.
    pub(crate) fn freq(&self, l: usize, rank: usize) -> f64 {
        self.prefix(l, rank + 1) - self.prefix(l, rank)
    }

    /// Ids of the `k` hottest neurons of layer `l`, sorted by id.
    fn hottest(&self, l: usize, k: usize) -> Vec<u32> {
        let mut ids = match &self.sorted {
            None => (0..k as u32).collect(),
            Some(s) => s.order[l * self.ffn..l * self.ffn + k].to_vec(),
        };
        ids.sort_unstable();
        ids
    }
}

// ---------------------------------------------------------------------------------------------
// The plan.

/// One layer's placement.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// Where attention runs; on the GPU its KV cache is there too.
    pub attention: Device,
    /// FFN neurons on the GPU, sorted by id (all of them when `whole_ffn`); the others run on
    /// the CPU.
    pub hot: Vec<u32>,
    /// The FFN is wholly on the GPU, as gate, up and down in the file's format (not gathered).
    pub whole_ffn: bool,
    /// Device bytes of this layer: attention + KV when on the GPU, the FFN part.
    pub gpu_bytes: u64,
    /// Share of this layer's activation mass (sum of neuron frequencies) the GPU covers.
    pub mass: f64,
    pub reason: String,
}

/// Bytes per token the CPU no longer reads thanks to the GPU: what the plan reaches, an upper
/// bound on any neurons-mode plan within the same budget, and what putting everything on the
/// GPU would reach.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Coverage {
    pub taken: f64,
    pub bound: f64,
    pub total: f64,
}

impl Coverage {
    /// How far below the bound the plan is, as a fraction of the bound (0 when it reaches it).
    pub fn gap(&self) -> f64 {
        if self.bound > 0.0 { ((self.bound - self.taken) / self.bound).max(0.0) } else { 0.0 }
    }
}

/// Where every part of the model runs; see the module header.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub mode: Offload,
    pub layers: Vec<LayerPlan>,
    /// Where the output matrix (and the logits) run.
    pub output: Device,
    /// Device bytes in all (≤ `budget.vram`): layers, output, scratch.
    pub gpu_bytes: u64,
    pub budget: Budget,
    /// Neurons per layer.
    pub ffn_dim: usize,
    /// Device bytes of the scratch buffers (0 when nothing is on the GPU).
    pub scratch_bytes: u64,
    /// Device bytes of the KV caches on the GPU.
    pub kv_bytes: u64,
    /// Device bytes of the output matrix and its logits buffer (0 on the CPU).
    pub output_bytes: u64,
    pub coverage: Coverage,
    /// Why the output is where it is, and why the plan as a whole looks as it does.
    pub output_reason: String,
    pub reason: String,
}

impl Placement {
    /// Everything on the CPU (no GPU, or no budget).
    pub fn cpu_only(n_layers: usize) -> Placement {
        let layer = LayerPlan { attention: Device::Cpu, hot: Vec::new(), whole_ffn: false, gpu_bytes: 0, mass: 0.0, reason: "CPU only".into() };
        Placement {
            mode: Offload::default(),
            layers: vec![layer; n_layers],
            output: Device::Cpu,
            gpu_bytes: 0,
            budget: Budget { vram: 0, ctx: 0, sessions: 0 },
            ffn_dim: 0,
            scratch_bytes: 0,
            kv_bytes: 0,
            output_bytes: 0,
            coverage: Coverage::default(),
            output_reason: "CPU only".into(),
            reason: "CPU only".into(),
        }
    }

    /// Plans `mode` for the model `fp` within `budget`. `frequency`: (layers, ffn) activation
    /// frequencies from the profile; `None` treats every neuron as active every token (a dense
    /// model). Errors name a frequency table of the wrong shape or values outside [0, 1], and a
    /// budget with no context or no session.
    pub fn plan(fp: &Footprint, frequency: Option<&[f32]>, budget: &Budget, mode: Offload) -> Result<Placement> {
        if budget.ctx == 0 {
            return Err(EngineError::Param { name: "ctx", problem: "the budget needs a context of at least 1 position".into() });
        }
        if budget.sessions == 0 {
            return Err(EngineError::Param { name: "sessions", problem: "the budget needs at least 1 session".into() });
        }
        if (fp.ctx, fp.sessions) != (budget.ctx, budget.sessions) {
            return Err(EngineError::Param {
                name: "budget",
                problem: format!(
                    "KV for {} positions × {} session(s), but the footprint was measured for {} × {}",
                    budget.ctx, budget.sessions, fp.ctx, fp.sessions
                ),
            });
        }
        let freqs = Freqs::new(fp, frequency)?;
        let bound = neurons::upper_bound(fp, &freqs, budget);
        let total = neurons::total_value(fp, &freqs);
        if budget.vram < fp.scratch {
            let why = format!("budget {:.2} MiB is below the GPU scratch buffers ({:.2} MiB): everything on the CPU", mib(budget.vram), mib(fp.scratch));
            return Ok(Self::all_cpu(fp, budget, mode, why, Coverage { taken: 0.0, bound, total }));
        }
        let choice = match mode {
            Offload::Neurons => neurons::plan(fp, &freqs, budget),
            Offload::Layers => layers_prefix(fp, &freqs, budget, bound, total),
        };
        if choice.used == 0 {
            let why = format!(
                "no part fits in the {:.2} MiB left beside the scratch buffers ({:.2} MiB): everything on the CPU",
                mib(budget.vram - fp.scratch),
                mib(fp.scratch)
            );
            return Ok(Self::all_cpu(fp, budget, mode, why, choice.coverage));
        }
        Ok(Self::from_choice(fp, &freqs, budget, mode, choice))
    }

    /// One line: what is on the GPU (for logs).
    pub fn summary(&self) -> String {
        let n = self.layers.len();
        let attn = self.layers.iter().filter(|l| l.attention == Device::Gpu).count();
        let hot: usize = self.layers.iter().map(|l| l.hot.len()).sum();
        let whole = self.layers.iter().filter(|l| l.whole_ffn).count();
        let neurons = (n * self.ffn_dim).max(1);
        let mass = self.layers.iter().map(|l| l.mass).sum::<f64>() / n.max(1) as f64;
        format!(
            "{} mode: attention of {attn}/{n} layers, {:.1}% of FFN neurons ({whole} whole layers, {:.1}% of activations), output on {}, {:.2} MiB",
            self.mode,
            100.0 * hot as f64 / neurons as f64,
            100.0 * mass,
            self.output,
            mib(self.gpu_bytes)
        )
    }

    fn all_cpu(fp: &Footprint, budget: &Budget, mode: Offload, why: String, coverage: Coverage) -> Placement {
        let mut p = Placement::cpu_only(fp.layers.len());
        p.layers.iter_mut().for_each(|l| l.reason = "no GPU budget".into());
        Placement { mode, budget: *budget, ffn_dim: fp.ffn_dim, coverage, output_reason: "no GPU budget".into(), reason: why, ..p }
    }

    /// Writes the choice out as per-layer plans with their reasons.
    fn from_choice(fp: &Footprint, freqs: &Freqs, budget: &Budget, mode: Offload, c: neurons::Choice) -> Placement {
        // Layers mode: the bytes left when the first layer that did not fit was tried.
        let left = budget.vram - c.used + if c.output { fp.output_gpu() } else { 0 };
        let first_off = c.attention.iter().position(|a| !a).unwrap_or(fp.layers.len());
        let mut kv_bytes = 0;
        let layers: Vec<LayerPlan> = fp
            .layers
            .iter()
            .enumerate()
            .map(|(l, lf)| {
                let attn = lf.attention_gpu();
                let (k, ffn_gpu) = match c.ffn[l] {
                    neurons::Ffn::Hot(k) => (k, lf.hot_ffn_gpu(k)),
                    neurons::Ffn::Whole => (fp.ffn_dim, lf.whole_ffn.gpu),
                };
                let whole_ffn = c.ffn[l] == neurons::Ffn::Whole;
                kv_bytes += if c.attention[l] { lf.kv } else { 0 };
                let total = freqs.prefix(l, fp.ffn_dim);
                let mass = if total > 0.0 { freqs.prefix(l, k) / total } else if k == fp.ffn_dim { 1.0 } else { 0.0 };
                let attn_why = match c.attention[l] {
                    true => format!("attention+KV {:.2} MiB", mib(attn)),
                    false => format!("attention+KV {:.2} MiB did not fit", mib(attn)),
                };
                let ffn_why = match c.ffn[l] {
                    neurons::Ffn::Whole => "whole FFN as in the file".to_string(),
                    neurons::Ffn::Hot(k) if k == fp.ffn_dim => "all neurons, row by row".to_string(),
                    neurons::Ffn::Hot(0) => format!("hottest neuron (freq {:.3}) did not fit", freqs.freq(l, 0)),
                    neurons::Ffn::Hot(k) => format!("hottest {k}; next (freq {:.3}) did not fit", freqs.freq(l, k)),
                };
                let reason = match mode {
                    Offload::Neurons => format!("{attn_why}; {ffn_why}"),
                    Offload::Layers if c.attention[l] => format!("whole layer: {attn_why} + FFN {:.2} MiB", mib(ffn_gpu)),
                    Offload::Layers if l == first_off => {
                        format!("whole layer needs {:.2} MiB, {:.2} MiB left", mib(attn + lf.whole_ffn.gpu), mib(left))
                    }
                    Offload::Layers => format!("after layer {first_off}, which did not fit (a prefix of layers)"),
                };
                LayerPlan {
                    attention: if c.attention[l] { Device::Gpu } else { Device::Cpu },
                    hot: if whole_ffn { (0..fp.ffn_dim as u32).collect() } else { freqs.hottest(l, k) },
                    whole_ffn,
                    gpu_bytes: if c.attention[l] { attn } else { 0 } + ffn_gpu,
                    mass,
                    reason,
                }
            })
            .collect();
        let output_bytes = if c.output { fp.output_gpu() } else { 0 };
        let output_reason = match c.output {
            true => format!("output matrix + logits {:.2} MiB", mib(output_bytes)),
            false => format!("output matrix + logits {:.2} MiB did not fit", mib(fp.output_gpu())),
        };
        let reason = match mode {
            Offload::Neurons => "greedy by CPU bytes saved per GPU byte, then the bytes left filled with single neurons".to_string(),
            Offload::Layers => "whole layers from layer 0 while they fit, then the output matrix if it fits".to_string(),
        };
        Placement {
            mode,
            layers,
            output: if c.output { Device::Gpu } else { Device::Cpu },
            gpu_bytes: c.used,
            budget: *budget,
            ffn_dim: fp.ffn_dim,
            scratch_bytes: fp.scratch,
            kv_bytes,
            output_bytes,
            coverage: c.coverage,
            output_reason,
            reason,
        }
    }
}

/// Layers mode: whole layers from layer 0 while they fit, then the output matrix if it fits.
fn layers_prefix(fp: &Footprint, freqs: &Freqs, budget: &Budget, bound: f64, total: f64) -> neurons::Choice {
    let n = fp.layers.len();
    let (mut attention, mut ffn) = (vec![false; n], vec![neurons::Ffn::Hot(0); n]);
    let mut used = fp.scratch;
    let mut taken = 0.0;
    for (l, lf) in fp.layers.iter().enumerate() {
        let cost = lf.attention_gpu().saturating_add(lf.whole_ffn.gpu);
        match used.checked_add(cost).filter(|&u| u <= budget.vram) {
            Some(u) => used = u,
            None => break,
        }
        (attention[l], ffn[l]) = (true, neurons::Ffn::Whole);
        taken += lf.attention.cpu_read as f64 + freqs.prefix(l, fp.ffn_dim) * lf.neuron_cpu_read;
    }
    let output = used.checked_add(fp.output_gpu()).is_some_and(|u| u <= budget.vram);
    if output {
        used += fp.output_gpu();
        taken += fp.output.cpu_read as f64;
    }
    let nothing = !output && !attention.iter().any(|a| *a);
    neurons::Choice { attention, ffn, output, used: if nothing { 0 } else { used }, coverage: Coverage { taken, bound, total } }
}

// ---------------------------------------------------------------------------------------------
// The table.

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.budget;
        writeln!(f, "placement: {} mode, budget {:.2} MiB, KV for {} positions × {} session(s)", self.mode, mib(b.vram), b.ctx, b.sessions)?;
        writeln!(f, "| layer | attention | hot neurons | GPU MiB | mass on GPU | reason |")?;
        writeln!(f, "|---:|---|---:|---:|---:|---|")?;
        for (i, l) in self.layers.iter().enumerate() {
            let hot = if self.ffn_dim > 0 { format!("{}/{}", l.hot.len(), self.ffn_dim) } else { "0".into() };
            let whole = if l.whole_ffn { " (whole)" } else { "" };
            writeln!(f, "| {i} | {} | {hot}{whole} | {:.2} | {:.1}% | {} |", l.attention, mib(l.gpu_bytes), 100.0 * l.mass, l.reason)?;
        }
        writeln!(f, "| output | {} | | {:.2} | | {} |", self.output, mib(self.output_bytes), self.output_reason)?;
        let weights = self.gpu_bytes.saturating_sub(self.kv_bytes + self.scratch_bytes);
        writeln!(
            f,
            "GPU: {:.2} MiB of {:.2} MiB ({:.1}%): weights {:.2} MiB, KV {:.2} MiB, scratch {:.2} MiB",
            mib(self.gpu_bytes),
            mib(b.vram),
            if b.vram > 0 { 100.0 * self.gpu_bytes as f64 / b.vram as f64 } else { 0.0 },
            mib(weights),
            mib(self.kv_bytes),
            mib(self.scratch_bytes)
        )?;
        let c = &self.coverage;
        let share = if c.total > 0.0 { 100.0 * c.taken / c.total } else { 0.0 };
        writeln!(f, "reads per token moved to the GPU: {:.2} of {:.2} MiB ({share:.1}%)", c.taken / 1048576.0, c.total / 1048576.0)?;
        writeln!(f, "upper bound on any neurons-mode plan: {:.2} MiB; this plan is {:.2}% below it", c.bound / 1048576.0, 100.0 * c.gap())?;
        write!(f, "why: {}", self.reason)
    }
}
