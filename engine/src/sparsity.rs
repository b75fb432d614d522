//! Activation sparsity in the FFN: which neurons a token skips, from a profile made by `ember
//! profile` (see `ember_predictor::profile`).
//!
//! A setting is a [`Criterion`] and a target sparsity. The profile gives each layer its |h|
//! threshold for that sparsity (calibrated on a corpus, as CATS does for the gate and TEAL for
//! inputs; here on h = act(gate·x) ⊙ (up·x), which loses far less) and, for
//! [`Criterion::Predictor`], a trained low-rank predictor; [`Criterion::Input`] (TEAL) also
//! skips the FFN input's small channels, with the layer's |x| threshold; [`Criterion::Gate`]
//! computes gate first and skips the up rows of neurons whose |act(gate)| is below the layer's
//! gate threshold. Building a setting makes the per-neuron copy of each layer's `down` (one
//! contiguous column per neuron), and for `Input` of gate and up (one column per input channel),
//! that the sparse decode step reads;
//! prefill keeps the dense products and zeroes the skipped neurons and channels, which gives the
//! same result.

use std::path::{Path, PathBuf};

use ember_kernels::cpu::columns::{columns_axpy, ColumnsScratch, QuantColumns};
use ember_kernels::cpu::sparse::{axpy_rows, AxpyScratch, ColumnMajor};
use ember_kernels::{DType, MatRef};
use ember_predictor::lowrank::LowRankPredictor;
use ember_predictor::profile::ModelShape;
pub use ember_predictor::profile::GATE_SHARE;
pub use ember_predictor::{Criterion, Profile};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// What a user asks for (`--profile`, `--sparsity`, `--criterion`).
#[derive(Clone, Debug, Default)]
pub struct SparsityOptions {
    /// The profile; `None` looks for `<model stem>.profile.safetensors` beside the model.
    pub profile: Option<PathBuf>,
    /// Target sparsity overriding the profile's default; `Some(0.0)` runs dense.
    pub sparsity: Option<f32>,
    /// Criterion overriding the profile's default.
    pub criterion: Option<Criterion>,
}

/// A sparsity setting ready to run.
pub struct SparseFfn {
    pub criterion: Criterion,
    pub sparsity: f32,
    pub profile_path: PathBuf,
    pub(crate) layers: Vec<SparseLayer>,
}

pub(crate) struct SparseLayer {
    /// h is kept where |h| > threshold.
    pub threshold: f32,
    /// [`Criterion::Input`]: the FFN input's channel i is kept where |x_i| > x_threshold
    /// (0 for the other criteria: every channel).
    pub x_threshold: f32,
    /// [`Criterion::Gate`]: up is read for neuron j only where |act(gate_j·x)| > g_threshold
    /// (0 for the other criteria).
    pub g_threshold: f32,
    /// [`Criterion::Input`]: gate and up by input channel; `None` where columns would read no
    /// fewer bytes than the dense products (which then run over the zeroed input).
    pub gate_up_t: Option<[Columns; 2]>,
    /// `down` by neuron (one contiguous column per neuron); `None` where no column layout
    /// reads fewer bytes than the dense product (which then runs over h with the skipped
    /// neurons zero).
    pub down_t: Option<Columns>,
    pub predictor: Option<LowRankPredictor>,
    pub bundle: Option<Bundle>,
}

/// A matrix stored by input column (`down` by neuron, gate and up by input channel): the
/// model's own quants moved into columns where the format is a legacy one (exact, and no more
/// bytes than the rows), else an 8-bit transposed copy whose rows follow the bundle's hot order
/// when there is a bundle.
pub(crate) enum Columns {
    Native(QuantColumns),
    Requantized(ColumnMajor),
}

impl Columns {
    /// The layout that reads fewer bytes when a token keeps about `kept` of the inputs: the
    /// model's own columns read every kept block's scales for all outputs, which at high
    /// sparsity (a ReLU model's 90%) costs as much as the 8-bit copy's per-input scales; that
    /// copy, in the bundle's hot order, then keeps a token's neurons close together.
    /// `None` when neither reads under [`DENSE_SHARE`] of the dense product's bytes.
    fn new(w: MatRef<'_>, order: &[u32], kept: f64) -> Result<Option<Columns>> {
        let native = QuantColumns::bytes_read_per_input(w.dtype, w.rows, kept);
        let copy = kept * ColumnMajor::bytes_per_input(w.rows) as f64;
        let dense = w.data.len() as f64 / w.cols.max(1) as f64;
        Ok(match native {
            Some(native) if native <= NATIVE_SHARE * copy => {
                (native <= DENSE_SHARE * dense).then(|| QuantColumns::from_mat(w).map(Columns::Native)).transpose()?
            }
            _ => (copy <= DENSE_SHARE * dense).then(|| ColumnMajor::from_mat_ordered(w, order).map(Columns::Requantized)).transpose()?,
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            Columns::Native(c) => c.bytes(),
            Columns::Requantized(c) => c.bytes(),
        }
    }

    /// `out = Σ_k coef[k] · W[:, idx[k]]`; `idx` are input positions (in the copy's order).
    fn axpy(&self, idx: &[u32], coef: &[f32], out: &mut [f32], s: &mut DownScratch) -> Result<()> {
        match self {
            Columns::Native(c) => columns_axpy(c, idx, coef, out, &mut s.cols)?,
            Columns::Requantized(c) => axpy_rows(c, idx, coef, out, &mut s.axpy)?,
        }
        Ok(())
    }

    /// Bytes one neuron's column of a `down` in `dtype` with `dim` outputs costs a decode step.
    pub fn bytes_per_neuron(dtype: DType, dim: usize) -> usize {
        QuantColumns::bytes_per_input_of(dtype, dim).unwrap_or_else(|| ColumnMajor::bytes_per_input(dim))
    }
}

/// The model's own columns are used when they read at most this share of the 8-bit copy's bytes
/// (their kernel also adds each block's scales, which the copy folds into its per-neuron ones).
const NATIVE_SHARE: f64 = 0.75;

/// Columns are used when they read at most this share of the dense product's bytes (and a
/// layer's predictor only when it names at most this share of the neurons): adding
/// scattered columns costs more per byte than the dense row dots, most for gate and up's shape
/// (many outputs, few inputs). Measured on a 2-core AVX2 guest, 1 thread, FFN ms per token with
/// columns forced: SmolLM2's Q4_1 `down` at 70% of its neurons (0.84 of the dense bytes) 6.5–7.2
/// against 6.1–6.7 dense; Qwen2.5-Coder's Q5_0 gate and up at 50% of their inputs (0.55 of the
/// bytes) with `down` from the 8-bit copy 32.1 against 26.6–28.7 dense.
const DENSE_SHARE: f64 = 0.5;

/// Buffers of [`SparseLayer::down`].
#[derive(Default)]
pub struct DownScratch {
    axpy: AxpyScratch,
    cols: ColumnsScratch,
    pos: Vec<u32>,
}

impl SparseLayer {
    /// `out = Σ_k coef[k] · down[:, idx[k]]` over neurons `idx`; false (nothing done) when the
    /// setting holds no columns of `down`.
    pub(crate) fn down(&self, idx: &[u32], coef: &[f32], out: &mut [f32], s: &mut DownScratch) -> Result<bool> {
        match (&self.down_t, &self.bundle) {
            (None, _) => return Ok(false),
            (Some(Columns::Requantized(c)), Some(b)) => {
                s.pos.clear();
                s.pos.extend(idx.iter().map(|&j| b.pos[j as usize]));
                axpy_rows(c, &s.pos, coef, out, &mut s.axpy)?
            }
            (Some(down), _) => down.axpy(idx, coef, out, s)?,
        }
        Ok(true)
    }

    /// [`Criterion::Input`]: zeroes the entries of `x` (one or more tokens' inputs) with
    /// |x_i| ≤ `x_threshold` and hands each kept one's position in `x` and value to `kept`.
    pub(crate) fn mask_input(&self, x: &mut [f32], mut kept: impl FnMut(u32, f32)) {
        for (i, v) in x.iter_mut().enumerate() {
            if v.abs() > self.x_threshold {
                kept(i as u32, *v);
            } else {
                *v = 0.0;
            }
        }
    }

    /// [`Criterion::Input`]: gate·x and up·x over the input channels `idx` (values `coef`), into
    /// `gate` and `up`; false when the setting holds no gate/up columns.
    pub(crate) fn gate_up(&self, idx: &[u32], coef: &[f32], gate: &mut [f32], up: &mut [f32], s: &mut DownScratch) -> Result<bool> {
        let Some([g, u]) = &self.gate_up_t else { return Ok(false) };
        g.axpy(idx, coef, gate, s)?;
        u.axpy(idx, coef, up, s)?;
        Ok(true)
    }
}

/// Gate and up rows of every neuron side by side, hottest neuron first (PowerInfer's
/// row-column bundling for the CPU): a token's predicted neurons are then mostly near the
/// front and each one is one contiguous read of its two rows. Copied from the model's bytes
/// (exact); used by [`Criterion::Predictor`] decode.
pub(crate) struct Bundle {
    pub rows: Vec<u8>, // (2·ffn_dim, row_bytes): position p holds rows 2p (gate) and 2p+1 (up)
    pub dtype: ember_kernels::DType,
    pub cols: usize,
    pub pos: Vec<u32>,   // (ffn_dim): neuron j's position
    pub order: Vec<u32>, // (ffn_dim): the neuron at position p
}

impl Bundle {
    fn new(gate: MatRef<'_>, up: MatRef<'_>, order: &[u32]) -> Option<Bundle> {
        if gate.dtype != up.dtype || gate.cols != up.cols || gate.rows != up.rows {
            return None;
        }
        let mut rows = Vec::with_capacity(gate.data.len() + up.data.len());
        let mut pos = vec![0u32; order.len()];
        for (p, &j) in order.iter().enumerate() {
            rows.extend_from_slice(gate.row(j as usize));
            rows.extend_from_slice(up.row(j as usize));
            pos[j as usize] = p as u32;
        }
        Some(Bundle { rows, dtype: gate.dtype, cols: gate.cols, pos, order: order.to_vec() })
    }

    pub fn mat(&self) -> MatRef<'_> {
        MatRef { dtype: self.dtype, rows: 2 * self.pos.len(), cols: self.cols, data: &self.rows }
    }
}

/// One layer's FFN weights, as the sparse setting reads them.
pub(crate) struct FfnMats<'a> {
    pub gate: MatRef<'a>, // (ffn_dim, dim)
    pub up: MatRef<'a>,   // (ffn_dim, dim)
    pub down: MatRef<'a>, // (dim, ffn_dim)
}

impl SparseFfn {
    /// One line for logs: criterion, sparsity, profile, and the layers whose sparse decode
    /// reads columns (the others run the dense products over the zeroed inputs).
    pub fn describe(&self) -> String {
        let (gate_up, down) = self.layers_with_columns();
        let n = self.layers.len();
        let cols = match self.criterion {
            Criterion::Input => format!("gate/up by column in {gate_up} of {n} layers, down in {down}"),
            Criterion::Predictor => format!("predictor in {} of {n} layers, down by neuron in {down}", self.layers_with_predictor()),
            Criterion::Gate => format!("up after gate in {n} of {n} layers, down by neuron in {down}"),
            _ => format!("down by neuron in {down} of {n} layers"),
        };
        format!("{} at {:.0}% ({}; {cols})", self.criterion.name(), self.sparsity * 100.0, self.profile_path.display())
    }

    /// Whether a decode step reads fewer weight bytes than dense anywhere: through columns, a
    /// predictor's rows, up only after gate ([`Criterion::Gate`], or `relu`: where gate is
    /// positive). A setting that does not runs the dense products over zeroed inputs, at dense
    /// speed at best.
    pub fn skips_reads(&self, relu: bool) -> bool {
        self.layers_with_predictor() > 0 || relu || self.criterion == Criterion::Gate || self.layers_with_columns() != (0, 0)
    }

    /// Layers that pick their neurons with the predictor (the others, under
    /// [`Criterion::Predictor`], keep the exact |h| criterion).
    pub fn layers_with_predictor(&self) -> usize {
        self.layers.iter().filter(|l| l.predictor.is_some()).count()
    }

    /// Layers whose decode reads gate and up by column, and `down` by neuron.
    pub fn layers_with_columns(&self) -> (usize, usize) {
        let gate_up = self.layers.iter().filter(|l| l.gate_up_t.is_some()).count();
        (gate_up, self.layers.iter().filter(|l| l.down_t.is_some()).count())
    }

    /// Extra bytes the setting holds (the per-neuron `down` copies, the gate/up columns, the
    /// bundles and the predictors).
    pub fn bytes(&self) -> usize {
        let layer = |l: &SparseLayer| {
            l.down_t.as_ref().map_or(0, Columns::bytes) + l.gate_up_t.as_ref().map_or(0, |[g, u]| g.bytes() + u.bytes()) + l.predictor.as_ref().map_or(0, |p| p.bytes()) + l.bundle.as_ref().map_or(0, |b| b.rows.len())
        };
        self.layers.iter().map(layer).sum()
    }
}

/// The shape a profile of this model records.
pub fn model_shape(path: &Path, c: &ModelConfig) -> ModelShape {
    ModelShape {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        arch: format!("{:?}", c.arch).to_lowercase(),
        n_layers: c.n_layers,
        dim: c.dim,
        ffn_dim: c.ffn_dim,
        activation: format!("{:?}", c.activation).to_lowercase(),
    }
}

/// Reads the profile `options` name (or the one beside `model_path`) and picks the setting:
/// `None` when there is no profile and none was asked for, or when the setting is dense.
pub fn resolve(model_path: &Path, config: &ModelConfig, options: &SparsityOptions) -> Result<Option<(Profile, PathBuf, Criterion, f32)>> {
    let (path, explicit) = match &options.profile {
        Some(p) => (p.clone(), true),
        None => (Profile::beside(model_path), false),
    };
    if !explicit && options.sparsity == Some(0.0) {
        return Ok(None); // dense asked for: the profile beside the model is not read
    }
    if !explicit && !path.is_file() {
        return match options.sparsity {
            Some(s) if s > 0.0 => Err(EngineError::Param {
                name: "sparsity",
                problem: format!(
                    "needs a profile of the model: none at {} (make one with `ember profile`, or pass --profile)",
                    path.display()
                ),
            }),
            _ => Ok(None),
        };
    }
    let profile = Profile::load(&path).map_err(|e| EngineError::Param { name: "profile", problem: e.to_string() })?;
    profile
        .check_model(&path, &model_shape(model_path, config))
        .map_err(|e| EngineError::Param { name: "profile", problem: e.to_string() })?;
    if options.sparsity == Some(0.0) && options.criterion.is_none() {
        return Ok(None); // dense asked for, whatever the profile's default criterion
    }
    let default = &profile.meta.default;
    let sparsity = options.sparsity.unwrap_or(default.sparsity);
    if !(0.0..1.0).contains(&sparsity) {
        return Err(EngineError::Param { name: "sparsity", problem: format!("{sparsity} is outside [0, 1)") });
    }
    let mut criterion = options.criterion.unwrap_or(match default.criterion {
        Criterion::Dense => Criterion::FfnMagnitude, // a sparsity asked of a profile whose default is dense
        c => c,
    });
    if criterion == Criterion::Predictor && profile.predictors.iter().any(Option::is_none) {
        return Err(EngineError::Param {
            name: "criterion",
            problem: format!("{} has no trained predictors (run `ember profile --predictors`)", path.display()),
        });
    }
    if sparsity == 0.0 && criterion != Criterion::Predictor {
        criterion = Criterion::Dense;
    }
    if criterion == Criterion::Dense {
        return Ok(None);
    }
    Ok(Some((profile, path, criterion, sparsity)))
}

/// Builds the runtime setting: per-layer thresholds, the per-neuron `down` copies and, for
/// the predictor, the hot-ordered gate/up bundles, for the input criterion gate and up by column.
pub(crate) fn build(profile: &Profile, path: PathBuf, criterion: Criterion, sparsity: f32, mats: &[FfnMats<'_>]) -> Result<SparseFfn> {
    let ffn = profile.meta.model.ffn_dim;
    if criterion == Criterion::Gate && profile.g_thresholds.is_none() {
        return Err(EngineError::Param {
            name: "criterion",
            problem: format!("{} has no gate thresholds (made before the gate criterion: run `ember profile` again)", path.display()),
        });
    }
    let layers = mats
        .par_iter()
        .enumerate()
        .map(|(l, m)| {
            // A layer keeps its predictor only where the neurons it names are few enough to
            // pay for reading them apart and for the active ones it misses; elsewhere the
            // layer runs the exact |h| criterion.
            let named = profile.meta.layers.get(l).and_then(|s| s.predictor.as_ref()).map(|s| s.predicted_fraction as f64);
            let predictor = match criterion {
                Criterion::Predictor => profile.predictors[l].clone().filter(|_| named.is_some_and(|f| f <= DENSE_SHARE)),
                _ => None,
            };
            let freq = &profile.frequency[l * ffn..(l + 1) * ffn];
            let (order, bundle) = match predictor {
                Some(_) => {
                    let mut order: Vec<u32> = (0..ffn as u32).collect();
                    order.sort_by(|&a, &b| freq[b as usize].total_cmp(&freq[a as usize]).then(a.cmp(&b)));
                    let bundle = Bundle::new(m.gate, m.up, &order);
                    (order, bundle)
                }
                None => ((0..ffn as u32).collect(), None),
            };
            let order = if bundle.is_some() { order } else { (0..ffn as u32).collect() };
            // Neurons a token keeps: 1 - sparsity, or fewer where the predictor's active sets
            // are smaller (a ReLU model's natural zeros).
            let kept = match (criterion, &predictor) {
                (Criterion::Predictor, Some(_)) => {
                    let active = freq.iter().map(|&f| f as f64).sum::<f64>() / ffn.max(1) as f64;
                    active.min(1.0 - sparsity as f64)
                }
                _ => 1.0 - sparsity as f64,
            };
            let (x_threshold, gate_up_t) = match criterion {
                Criterion::Input => {
                    let channels: Vec<u32> = (0..m.gate.cols as u32).collect();
                    let cols = |w| Columns::new(w, &channels, 1.0 - sparsity as f64);
                    let gate_up = match (cols(m.gate)?, cols(m.up)?) {
                        (Some(g), Some(u)) => Some([g, u]),
                        _ => None,
                    };
                    (profile.x_threshold(l, sparsity), gate_up)
                }
                _ => (0.0, None),
            };
            let g_threshold = match criterion {
                Criterion::Gate => profile.g_threshold(l, GATE_SHARE * sparsity).unwrap_or_default(), // present: checked above
                _ => 0.0,
            };
            Ok(SparseLayer {
                threshold: profile.h_threshold(l, sparsity),
                x_threshold,
                g_threshold,
                gate_up_t,
                down_t: Columns::new(m.down, &order, kept)?,
                predictor,
                bundle,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SparseFfn { criterion, sparsity, profile_path: path, layers })
}

/// Neurons kept and computed, and time in the FFN, counted over forward passes (the sparsity
/// achieved; `kept`, `gate_up_rows` and `total` only while a sparse setting is in use).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SparsityStats {
    /// Neurons whose contribution went into `down`.
    pub kept: u64,
    /// Rows of gate and up computed (dense: 2 per neuron); for [`Criterion::Input`], the kept
    /// input channels' share of them.
    pub gate_up_rows: u64,
    /// Neurons in all FFN evaluations (tokens × layers × ffn_dim).
    pub total: u64,
    /// Time spent in the FFN (all layers), dense or sparse, in nanoseconds.
    pub ffn_ns: u64,
}

impl SparsityStats {
    /// Share of neurons skipped.
    pub fn sparsity(&self) -> f64 {
        if self.total == 0 { 0.0 } else { 1.0 - self.kept as f64 / self.total as f64 }
    }

    /// Share of gate and up rows computed.
    pub fn gate_up_fraction(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.gate_up_rows as f64 / (2 * self.total) as f64 }
    }

    /// Sum of two counts.
    pub fn add(&mut self, o: &SparsityStats) {
        self.kept += o.kept;
        self.gate_up_rows += o.gate_up_rows;
        self.total += o.total;
        self.ffn_ns += o.ffn_ns;
    }
}
