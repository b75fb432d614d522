//! The profile file: what `ember profile` learned about one model's FFN activations, read by
//! every command that takes `--profile`. One safetensors file (tensors below, little-endian)
//! whose `__metadata__` holds `ember.profile`: the JSON of [`ProfileMeta`].
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `h_thresholds` | F32 | (layers, sparsities) | \|h\| below which the FFN intermediate h = act(gate·x) ⊙ (up·x) is zeroed to reach each sparsity |
//! | `x_thresholds` | F32 | (layers, sparsities) | \|x\| below which an FFN input channel is skipped (TEAL) |
//! | `g_thresholds` | F32 | (layers, sparsities) | \|act(gate·x)\| below which a neuron's up row is not read ([`Criterion::Gate`]; absent from profiles made before it) |
//! | `zero_fraction` | F32 | (layers) | share of h that is exactly zero (ReLU's natural sparsity) |
//! | `frequency` | F32 | (layers, ffn) | how often each neuron is active at the predictors' sparsity |
//! | `mean_abs` | F32 | (layers, ffn) | mean \|h\| of each neuron |
//! | `blk.N.predictor.*` | I8/F32 | | the low-rank predictor of layer N, when trained |
//!
//! Version 1. A reader refuses other versions and a profile made for another shape of model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::lowrank::LowRankPredictor;
use crate::{PredictorError, Result};

pub const PROFILE_VERSION: u32 = 1;
const META_KEY: &str = "ember.profile";

/// How a layer decides which FFN neurons to skip for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Every neuron computed.
    Dense,
    /// Zero h where |h| is below the layer's threshold: gate and up dense, down only over the
    /// neurons kept (exact given gate and up).
    FfnMagnitude,
    /// A low-rank predictor picks the neurons from x before gate and up; only those rows of
    /// gate, up and down are read, then the magnitude threshold applies among them.
    Predictor,
    /// TEAL's input sparsity: the FFN input's channels with |x| below the layer's threshold are
    /// skipped (gate and up read only the kept channels' columns), then h below its threshold
    /// (`down` reads only the kept neurons' columns); both thresholds at the same sparsity.
    Input,
    /// Gate first (CATS' criterion, used only to skip up): gate is computed for every neuron,
    /// up only for those with |act(gate)| above the layer's gate threshold, then h below its
    /// threshold is zeroed (`down` reads only the kept neurons). The gate threshold is taken at
    /// [`GATE_SHARE`] of the setting's sparsity, the h threshold at the sparsity itself.
    Gate,
}

/// [`Criterion::Gate`]'s gate sparsity as a share of the setting's. Measured on Qwen2.5-Coder-
/// 0.5B (WikiText-2, 10 windows of 512, each token keeping its largest values): h at 50% alone
/// 41.718 against 41.813 dense; with the gate's smallest 20 / 30 / 40% also skipped 41.493 /
/// 41.728 / 42.497. Past 0.6 of the h sparsity the gate drops neurons the h criterion keeps.
pub const GATE_SHARE: f32 = 0.6;

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Dense => "dense",
            Criterion::FfnMagnitude => "ffn_magnitude",
            Criterion::Predictor => "predictor",
            Criterion::Input => "input",
            Criterion::Gate => "gate",
        }
    }

    pub const ALL: [Criterion; 5] = [Criterion::Dense, Criterion::FfnMagnitude, Criterion::Predictor, Criterion::Input, Criterion::Gate];

    /// The names [`Criterion::parse`] accepts, for messages.
    pub fn names() -> String {
        Criterion::ALL.map(Criterion::name).join(", ")
    }

    pub fn parse(s: &str) -> Option<Criterion> {
        Criterion::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// The model a profile was made for (checked when it is loaded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub name: String,
    pub arch: String,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub activation: String,
}

/// The setting commands use when given the profile and no `--sparsity`, with the measurement
/// that justified it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DefaultSetting {
    pub criterion: Criterion,
    pub sparsity: f32,
    /// Perplexity on the held-out slice, dense and at this setting.
    pub dense_ppl: f64,
    pub ppl: f64,
    pub heldout_tokens: usize,
    /// Why this setting (e.g. the largest sparsity within the perplexity budget).
    pub reason: String,
}

/// One row of the profiler's calibration sweep on the held-out slice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPoint {
    pub criterion: Criterion,
    pub sparsity: f32,
    pub ppl: f64,
    /// Share of FFN neurons skipped, as measured while scoring.
    pub achieved: f32,
    /// Decode tokens/s measured by the profiler (points within the perplexity budget).
    #[serde(default)]
    pub decode_tps: Option<f64>,
    /// Whether the setting's decode reads fewer weight bytes than dense (columns, predicted
    /// rows, ReLU's skipped rows); `Some(false)`: the dense products over zeroed inputs, never
    /// a default. `None` in profiles written before it was recorded.
    #[serde(default)]
    pub skips_reads: Option<bool>,
}

/// Per-layer summary for people (the tensors hold the details).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerSummary {
    /// Fewest neurons (share) that hold 80% of activations at the predictors' sparsity.
    pub neurons_for_80pct: f32,
    pub zero_fraction: f32,
    /// Held-out quality of the predictor, when trained.
    pub predictor: Option<PredictorSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredictorSummary {
    pub rank: usize,
    pub recall: f32,
    pub precision: f32,
    pub predicted_fraction: f32,
    pub active_fraction: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProfileMeta {
    pub version: u32,
    pub model: ModelShape,
    pub corpus: String,
    pub tokens: usize,
    /// The target sparsities the threshold tensors have one column for.
    pub sparsities: Vec<f32>,
    /// The sparsity `frequency` and the predictors' training labels use.
    pub predictor_sparsity: f32,
    pub default: DefaultSetting,
    pub sweep: Vec<SweepPoint>,
    pub layers: Vec<LayerSummary>,
}

/// A profile in memory.
#[derive(Clone, Debug)]
pub struct Profile {
    pub meta: ProfileMeta,
    pub h_thresholds: Vec<f32>,  // (layers, sparsities)
    pub x_thresholds: Vec<f32>,  // (layers, sparsities)
    pub g_thresholds: Option<Vec<f32>>, // (layers, sparsities); None in profiles made before it
    pub zero_fraction: Vec<f32>, // (layers)
    pub frequency: Vec<f32>,     // (layers, ffn)
    pub mean_abs: Vec<f32>,      // (layers, ffn)
    pub predictors: Vec<Option<LowRankPredictor>>, // (layers)
}

impl Profile {
    /// The |h| threshold of `layer` for `sparsity`, interpolated between the calibrated
    /// sparsities (geometrically: thresholds grow about exponentially with sparsity).
    pub fn h_threshold(&self, layer: usize, sparsity: f32) -> f32 {
        self.threshold(&self.h_thresholds, layer, sparsity)
    }

    /// The |x| threshold of `layer`'s FFN input for `sparsity`, interpolated as
    /// [`Profile::h_threshold`].
    pub fn x_threshold(&self, layer: usize, sparsity: f32) -> f32 {
        self.threshold(&self.x_thresholds, layer, sparsity)
    }

    /// The |act(gate·x)| threshold of `layer` for a gate sparsity `sparsity`, interpolated as
    /// [`Profile::h_threshold`]; `None` when the profile has no gate thresholds.
    pub fn g_threshold(&self, layer: usize, sparsity: f32) -> Option<f32> {
        self.g_thresholds.as_ref().map(|t| self.threshold(t, layer, sparsity))
    }

    /// Layer `layer`'s row of a (layers, sparsities) threshold table, interpolated at `sparsity`.
    fn threshold(&self, table: &[f32], layer: usize, sparsity: f32) -> f32 {
        let s = &self.meta.sparsities;
        interpolate(s, &table[layer * s.len()..(layer + 1) * s.len()], sparsity)
    }

    /// The file commands look for beside a model: `<model file stem>.profile.safetensors`.
    pub fn beside(model: &Path) -> PathBuf {
        let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        model.with_file_name(format!("{stem}.profile.safetensors"))
    }

    /// Writes the profile to `path` (through a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        let m = &self.meta;
        let (l, s, f) = (m.model.n_layers, m.sparsities.len(), m.model.ffn_dim);
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("h_thresholds".into(), Dtype::F32, vec![l, s], f32s(&self.h_thresholds)),
            ("x_thresholds".into(), Dtype::F32, vec![l, s], f32s(&self.x_thresholds)),
            ("zero_fraction".into(), Dtype::F32, vec![l], f32s(&self.zero_fraction)),
            ("frequency".into(), Dtype::F32, vec![l, f], f32s(&self.frequency)),
            ("mean_abs".into(), Dtype::F32, vec![l, f], f32s(&self.mean_abs)),
        ];
        if let Some(g) = &self.g_thresholds {
            tensors.push(("g_thresholds".into(), Dtype::F32, vec![l, s], f32s(g)));
        }
        for (i, p) in self.predictors.iter().enumerate() {
            if let Some(p) = p {
                for (name, dtype, shape, bytes) in p.to_tensors() {
                    tensors.push((format!("blk.{i}.predictor.{name}"), dtype, shape, bytes));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(n, d, shape, b)| {
                let v = safetensors::tensor::TensorView::new(*d, shape.clone(), b).map_err(|e| file_err(path, n, e.to_string()))?;
                Ok((n.clone(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        let json = serde_json::to_string(m).map_err(|e| file_err(path, META_KEY, e.to_string()))?;
        let meta = HashMap::from([(META_KEY.to_string(), json)]);
        let bytes = safetensors::serialize(views, &Some(meta)).map_err(|e| file_err(path, "tensors", e.to_string()))?;
        let tmp = path.with_extension("safetensors.tmp");
        let io = |e| PredictorError::Io { path: path.to_path_buf(), source: e };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a profile, checking its version and every tensor's shape.
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = std::fs::read(path).map_err(|e| PredictorError::Io { path: path.to_path_buf(), source: e })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| file_err(path, "header", format!("not a readable safetensors file ({} bytes; truncated or corrupt?): {e:?}", bytes.len())))?;
        let json = header.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| {
            file_err(path, META_KEY, "missing: not an Ember profile (make one with `ember profile`)".into())
        })?;
        let meta: ProfileMeta = serde_json::from_str(json).map_err(|e| file_err(path, META_KEY, e.to_string()))?;
        if meta.version != PROFILE_VERSION {
            return Err(file_err(path, "version", format!("{} is not the supported version {PROFILE_VERSION}", meta.version)));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, "tensors", e.to_string()))?;
        let get = |name: &str| -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
            st.tensor(name).ok().map(|t| (t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        };
        let (l, s, f) = (meta.model.n_layers, meta.sparsities.len(), meta.model.ffn_dim);
        let f32_tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (dtype, got, data) = get(name).ok_or_else(|| file_err(path, name, "missing".into()))?;
            if dtype != Dtype::F32 || got != shape {
                return Err(file_err(path, name, format!("expected F32 {shape:?}, found {dtype:?} {got:?}")));
            }
            Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let mut predictors = Vec::with_capacity(l);
        for i in 0..l {
            let prefix = format!("blk.{i}.predictor.");
            let present = st.names().iter().any(|n| n.starts_with(&prefix));
            predictors.push(match present {
                true => Some(LowRankPredictor::from_tensors(path, &prefix, &get)?),
                false => None,
            });
        }
        if meta.layers.len() != l {
            return Err(file_err(path, "layers", format!("{} summaries for {l} layers", meta.layers.len())));
        }
        Ok(Profile {
            h_thresholds: f32_tensor("h_thresholds", &[l, s])?,
            x_thresholds: f32_tensor("x_thresholds", &[l, s])?,
            g_thresholds: match st.names().iter().any(|n| *n == "g_thresholds") {
                true => Some(f32_tensor("g_thresholds", &[l, s])?),
                false => None,
            },
            zero_fraction: f32_tensor("zero_fraction", &[l])?,
            frequency: f32_tensor("frequency", &[l, f])?,
            mean_abs: f32_tensor("mean_abs", &[l, f])?,
            predictors,
            meta,
        })
    }

    /// Fails unless the profile was made for a model of this shape.
    pub fn check_model(&self, path: &Path, shape: &ModelShape) -> Result<()> {
        let m = &self.meta.model;
        let fields = [("n_layers", m.n_layers, shape.n_layers), ("dim", m.dim, shape.dim), ("ffn_dim", m.ffn_dim, shape.ffn_dim)];
        for (field, have, want) in fields {
            if have != want {
                return Err(file_err(path, field, format!("the profile is for {have}, the model has {want} (profile made for {})", m.name)));
            }
        }
        Ok(())
    }
}

fn file_err(path: &Path, field: &str, problem: String) -> PredictorError {
    PredictorError::File { path: path.to_path_buf(), field: field.to_string(), problem }
}

/// Piecewise interpolation of `ys` (positive, increasing) at `x` over sorted `xs`, geometric
/// between points; clamped to the ends.
fn interpolate(xs: &[f32], ys: &[f32], x: f32) -> f32 {
    if x <= 0.0 || xs.is_empty() {
        return 0.0;
    }
    if x <= xs[0] {
        return ys[0] * x / xs[0];
    }
    for i in 1..xs.len() {
        if x <= xs[i] {
            let t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
            let (a, b) = (ys[i - 1].max(1e-30), ys[i].max(1e-30));
            return a * (b / a).powf(t);
        }
    }
    ys[xs.len() - 1]
}
