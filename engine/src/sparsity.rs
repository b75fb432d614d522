//! Activation sparsity in the FFN: which neurons a token skips, from a profile made by `ember
//! profile` (see `ember_predictor::profile`).
//!
//! A setting is a [`Criterion`] and a target sparsity. The profile gives each layer its |h|
//! threshold for that sparsity (calibrated on a corpus, as CATS does for the gate and TEAL for
//! inputs; here on h = act(gate·x) ⊙ (up·x), which loses far less) and, for
//! [`Criterion::Predictor`], a trained low-rank predictor. Building a setting makes the
//! per-neuron copy of each layer's `down` (one contiguous row per neuron) the sparse decode step
//! reads; prefill keeps the dense products and zeroes the skipped neurons, which gives the same
//! result.

use std::path::{Path, PathBuf};

use ember_kernels::cpu::columns::{columns_axpy, ColumnsScratch, QuantColumns};
use ember_kernels::cpu::sparse::{axpy_rows, AxpyScratch, ColumnMajor};
use ember_kernels::{DType, MatRef};
use ember_predictor::lowrank::LowRankPredictor;
use ember_predictor::profile::ModelShape;
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
    /// `down` by neuron (one contiguous column per neuron).
    pub down_t: DownColumns,
    pub predictor: Option<LowRankPredictor>,
    pub bundle: Option<Bundle>,
}

/// `down` stored by neuron: the model's own quants moved into columns where the format is a
/// legacy one (exact, and no more bytes than the rows), else an 8-bit transposed copy whose
/// rows follow the bundle's hot order when there is a bundle.
pub(crate) enum DownColumns {
    Native(QuantColumns),
    Requantized(ColumnMajor),
}

impl DownColumns {
    /// The layout that reads fewer bytes when a token keeps about `kept` of the neurons: the
    /// model's own columns read every kept block's scales for all outputs, which at high
    /// sparsity (a ReLU model's 90%) costs as much as the 8-bit copy's per-neuron scales; that
    /// copy, in the bundle's hot order, then keeps a token's neurons close together.
    fn new(down: MatRef<'_>, order: &[u32], kept: f64) -> Result<DownColumns> {
        let native = QuantColumns::bytes_read_per_input(down.dtype, down.rows, kept);
        let copy = kept * ColumnMajor::bytes_per_input(down.rows) as f64;
        Ok(match native {
            Some(native) if native <= NATIVE_SHARE * copy => DownColumns::Native(QuantColumns::from_mat(down)?),
            _ => DownColumns::Requantized(ColumnMajor::from_mat_ordered(down, order)?),
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            DownColumns::Native(c) => c.bytes(),
            DownColumns::Requantized(c) => c.bytes(),
        }
    }

    /// Bytes one neuron's column of a `down` in `dtype` with `dim` outputs costs a decode step.
    pub fn bytes_per_neuron(dtype: DType, dim: usize) -> usize {
        QuantColumns::bytes_per_input_of(dtype, dim).unwrap_or_else(|| ColumnMajor::bytes_per_input(dim))
    }
}

/// The model's own columns are used when they read at most this share of the 8-bit copy's bytes
/// (their kernel also adds each block's scales, which the copy folds into its per-neuron ones).
const NATIVE_SHARE: f64 = 0.75;

/// Buffers of [`SparseLayer::down`].
#[derive(Default)]
pub struct DownScratch {
    axpy: AxpyScratch,
    cols: ColumnsScratch,
    pos: Vec<u32>,
}

impl SparseLayer {
    /// `out = Σ_k coef[k] · down[:, idx[k]]` over neurons `idx`.
    pub(crate) fn down(&self, idx: &[u32], coef: &[f32], out: &mut [f32], s: &mut DownScratch) -> Result<()> {
        match (&self.down_t, &self.bundle) {
            (DownColumns::Native(c), _) => columns_axpy(c, idx, coef, out, &mut s.cols)?,
            (DownColumns::Requantized(c), Some(b)) => {
                s.pos.clear();
                s.pos.extend(idx.iter().map(|&j| b.pos[j as usize]));
                axpy_rows(c, &s.pos, coef, out, &mut s.axpy)?
            }
            (DownColumns::Requantized(c), None) => axpy_rows(c, idx, coef, out, &mut s.axpy)?,
        }
        Ok(())
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
    /// One line for logs: criterion, sparsity, profile.
    pub fn describe(&self) -> String {
        format!("{} at {:.0}% ({})", self.criterion.name(), self.sparsity * 100.0, self.profile_path.display())
    }

    /// Extra bytes the setting holds (the per-neuron `down` copies, the bundles and the predictors).
    pub fn bytes(&self) -> usize {
        let layer = |l: &SparseLayer| {
            l.down_t.bytes() + l.predictor.as_ref().map_or(0, |p| p.bytes()) + l.bundle.as_ref().map_or(0, |b| b.rows.len())
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
/// the predictor, the hot-ordered gate/up bundles.
pub(crate) fn build(profile: &Profile, path: PathBuf, criterion: Criterion, sparsity: f32, mats: &[FfnMats<'_>]) -> Result<SparseFfn> {
    let ffn = profile.meta.model.ffn_dim;
    let layers = mats
        .par_iter()
        .enumerate()
        .map(|(l, m)| {
            let predictor = match criterion {
                Criterion::Predictor => profile.predictors[l].clone(),
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
            let kept = match criterion {
                Criterion::Predictor => {
                    let active = freq.iter().map(|&f| f as f64).sum::<f64>() / ffn.max(1) as f64;
                    active.min(1.0 - sparsity as f64)
                }
                _ => 1.0 - sparsity as f64,
            };
            Ok(SparseLayer {
                threshold: profile.h_threshold(l, sparsity),
                down_t: DownColumns::new(m.down, &order, kept)?,
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
    /// Rows of gate and up computed (dense: 2 per neuron).
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
