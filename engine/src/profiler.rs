//! The profiler (`ember profile`): runs the model over a calibration corpus and writes what the
//! sparse FFN needs (see `ember_predictor::profile` for the file).
//!
//! 1. Pass 1 over the calibration tokens: per layer, histograms of |h| (FFN intermediate), |x|
//!    (FFN input) and |act(gate·x)| → thresholds for each target sparsity; ReLU's exact zeros.
//! 2. Pass 2 over the first `samples` tokens: per neuron, how often it is kept at each threshold
//!    (hotness, skew) and, when predictors are asked for, (x, kept set) training pairs.
//! 3. Predictors: trained per layer, calibrated for a recall on a held-out tenth of the pairs;
//!    with several ranks to try, each layer keeps the rank whose decode step reads the fewest
//!    bytes (the predictor's own plus the predicted neurons' rows).
//! 4. Sweep on a held-out slice of the corpus (tokens after the calibration ones): perplexity
//!    dense and at each setting, and decode speed of those within the perplexity budget; the
//!    fastest of those that read fewer weight bytes than dense (the others run the dense
//!    products over zeroed inputs) is timed against dense again, alternately, and is the
//!    default when it decodes at least 3% faster, else dense.

use ember_predictor::lowrank::{self, Dataset, TrainConfig};
use ember_predictor::profile::{DefaultSetting, LayerSummary, PredictorSummary, ProfileMeta, SweepPoint, PROFILE_VERSION};
use ember_predictor::stats::{neurons_for_mass, MagnitudeHist, NeuronCounts};
use ember_predictor::{Criterion, Profile};

use crate::config::Activation;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::eval::{perplexity_of_tokens, PerplexityParams};
use crate::model::{FfnObserver, Logits};

#[derive(Clone, Debug)]
pub struct ProfileParams {
    /// Calibration tokens (pass 1).
    pub tokens: usize,
    /// Tokens of pass 2 (neuron counts, predictor training pairs).
    pub samples: usize,
    /// Held-out tokens after the calibration ones, for the sweep (whole windows of `ctx`).
    pub heldout: usize,
    pub ctx: usize,
    pub sparsities: Vec<f32>,
    /// The sparsity whose kept sets label the predictors' training pairs and give `frequency`.
    pub predictor_sparsity: f32,
    /// Train predictors with this configuration (`None`: none).
    pub predictors: Option<TrainConfig>,
    /// Bottleneck widths tried per layer (empty: the configuration's `rank` alone), each
    /// calibrated for `recall`; a layer keeps the one whose decode step reads the fewest bytes
    /// (see [`predictor_cost`]).
    pub ranks: Vec<usize>,
    /// Recall each predictor is calibrated for.
    pub recall: f32,
    /// Largest perplexity increase the default may cost (0.01 = +1%).
    pub ppl_budget: f64,
}

impl Default for ProfileParams {
    fn default() -> Self {
        ProfileParams {
            tokens: 8192,
            samples: 4096,
            heldout: 2048,
            ctx: 512,
            sparsities: (1..=9).map(|i| i as f32 / 10.0).collect(),
            predictor_sparsity: 0.5,
            predictors: None,
            ranks: Vec::new(),
            recall: 0.95,
            ppl_budget: 0.01,
        }
    }
}

/// Progress of a long stage: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Profiles `engine`'s model on `corpus` (named `corpus_name` in the file).
pub fn profile(engine: &mut Engine, corpus: &str, corpus_name: &str, params: &ProfileParams, progress: Progress<'_>) -> Result<Profile> {
    let ids = engine.tokenizer.encode(corpus, false)?;
    let need = params.tokens + params.heldout;
    if ids.len() < need || params.tokens == 0 || params.heldout < params.ctx {
        return Err(EngineError::Param {
            name: "corpus",
            problem: format!(
                "{corpus_name} has {} tokens; profiling needs {} calibration + {} held-out (at least one window of {})",
                ids.len(),
                params.tokens,
                params.heldout,
                params.ctx
            ),
        });
    }
    let c = engine.config().clone();
    let (l, s) = (c.n_layers, params.sparsities.len());
    let (calib, held) = (&ids[..params.tokens], &ids[params.tokens..need]);

    let mut pass1 = Histograms { h: vec![MagnitudeHist::default(); l], x: vec![MagnitudeHist::default(); l], a: vec![MagnitudeHist::default(); l] };
    run_windows(engine, calib, params.ctx, &mut pass1, &mut |d, t| progress("pass 1: activation histograms", d, t))?;
    let thr = |hists: &[MagnitudeHist]| -> Vec<f32> { hists.iter().flat_map(|h| params.sparsities.iter().map(|&sp| h.threshold(sp))).collect() };
    let (h_thresholds, x_thresholds, g_thresholds) = (thr(&pass1.h), thr(&pass1.x), thr(&pass1.a));
    let ref_s = params.sparsities.iter().position(|&x| (x - params.predictor_sparsity).abs() < 1e-6).ok_or(EngineError::Param {
        name: "predictor_sparsity",
        problem: format!("{} is not one of the profiled sparsities {:?}", params.predictor_sparsity, params.sparsities),
    })?;

    let mut pass2 = Counts {
        counts: (0..l).map(|i| NeuronCounts::new(c.ffn_dim, h_thresholds[i * s..(i + 1) * s].to_vec())).collect(),
        data: params.predictors.as_ref().map(|_| (0..l).map(|_| Dataset::new(c.dim, c.ffn_dim)).collect()),
        ref_s,
    };
    let samples = params.samples.min(calib.len());
    run_windows(engine, &calib[..samples], params.ctx, &mut pass2, &mut |d, t| progress("pass 2: neuron counts", d, t))?;

    let mut predictors = vec![None; l];
    let mut summaries: Vec<Option<PredictorSummary>> = vec![None; l];
    if let (Some(cfg), Some(data)) = (&params.predictors, &pass2.data) {
        let ranks = if params.ranks.is_empty() { vec![cfg.rank] } else { params.ranks.clone() };
        for (i, d) in data.iter().enumerate() {
            progress("predictors", i, l);
            let (train, val) = d.split(0.1);
            let neuron_bytes = engine.model.sparse_neuron_bytes(i);
            let mut best: Option<(f64, lowrank::LowRankPredictor, lowrank::Metrics)> = None;
            for &rank in &ranks {
                let cfg = TrainConfig { rank, ..cfg.clone() };
                let mut p = lowrank::train(&train, &cfg, &mut |_, _, _| {}).map_err(|e| predictor_err(i, e))?;
                p.calibrate(&val, params.recall).map_err(|e| predictor_err(i, e))?;
                let m = p.evaluate(&val).map_err(|e| predictor_err(i, e))?;
                let cost = predictor_cost(&p, &m, neuron_bytes);
                if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
                    best = Some((cost, p, m));
                }
            }
            let Some((_, p, m)) = best else { continue };
            summaries[i] = Some(PredictorSummary {
                rank: p.rank(),
                recall: m.recall,
                precision: m.precision,
                predicted_fraction: m.predicted_fraction,
                active_fraction: m.active_fraction,
            });
            predictors[i] = Some(p);
        }
        progress("predictors", l, l);
    }
    let frequency: Vec<f32> = pass2.counts.iter().flat_map(|n| n.frequency(ref_s)).collect();
    let mean_abs: Vec<f32> = pass2.counts.iter().flat_map(|n| n.sum_abs.iter().map(|v| (v / n.tokens.max(1) as f64) as f32)).collect();
    let layers = (0..l)
        .map(|i| LayerSummary {
            neurons_for_80pct: neurons_for_mass(&frequency[i * c.ffn_dim..(i + 1) * c.ffn_dim], 0.8),
            zero_fraction: pass1.h[i].zero_fraction(),
            predictor: summaries[i].clone(),
        })
        .collect();
    let placeholder = DefaultSetting { criterion: Criterion::Dense, sparsity: 0.0, dense_ppl: 0.0, ppl: 0.0, heldout_tokens: 0, reason: String::new() };
    let mut profile = Profile {
        meta: ProfileMeta {
            version: PROFILE_VERSION,
            model: crate::sparsity::model_shape(&engine.path, &c),
            corpus: corpus_name.to_string(),
            tokens: params.tokens,
            sparsities: params.sparsities.clone(),
            predictor_sparsity: params.predictor_sparsity,
            default: placeholder,
            sweep: Vec::new(),
            layers,
        },
        h_thresholds,
        x_thresholds,
        g_thresholds: Some(g_thresholds),
        zero_fraction: pass1.h.iter().map(|h| h.zero_fraction()).collect(),
        frequency,
        mean_abs,
        predictors,
    };
    sweep(engine, &mut profile, held, params, progress)?;
    Ok(profile)
}

/// Bytes a decode step reads for one layer with predictor `p`: its weights, and the rows of
/// the neurons it predicts (`neuron_bytes` each) at its measured predicted fraction. Decode on
/// the CPU is bound by these reads, so the cheapest predictor by this count is the fastest.
fn predictor_cost(p: &lowrank::LowRankPredictor, m: &lowrank::Metrics, neuron_bytes: usize) -> f64 {
    p.bytes() as f64 + f64::from(m.predicted_fraction) * (p.n_out() * neuron_bytes) as f64
}

fn predictor_err(layer: usize, e: ember_predictor::PredictorError) -> EngineError {
    EngineError::Param { name: "predictors", problem: format!("layer {layer}: {e}") }
}

/// Runs the tokens in windows of `ctx` from an empty cache, showing the FFN to `obs`.
fn run_windows(engine: &Engine, ids: &[u32], ctx: usize, obs: &mut dyn FfnObserver, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    let mut cache = engine.model.new_cache(ctx);
    let chunk = 128;
    let total = ids.len().div_ceil(ctx);
    for (w, window) in ids.chunks(ctx).enumerate() {
        cache.clear();
        for part in window.chunks(chunk) {
            let obs = &mut *obs;
            engine.install(|| engine.model.forward_observed(part, &mut cache, Logits::Last, Some(obs)).map(|_| ()))?;
        }
        progress(w + 1, total);
    }
    Ok(())
}

/// Pass 1: magnitude histograms of h, x and act(gate·x) per layer.
struct Histograms {
    h: Vec<MagnitudeHist>,
    x: Vec<MagnitudeHist>,
    a: Vec<MagnitudeHist>,
}

impl FfnObserver for Histograms {
    fn ffn(&mut self, layer: usize, x: &[f32], a: &[f32], h: &[f32]) {
        self.h[layer].add(h);
        self.x[layer].add(x);
        self.a[layer].add(a);
    }
}

/// Pass 2: neuron counts, and predictor training pairs labelled at sparsity index `ref_s`.
struct Counts {
    counts: Vec<NeuronCounts>,
    data: Option<Vec<Dataset>>,
    ref_s: usize,
}

impl FfnObserver for Counts {
    fn ffn(&mut self, layer: usize, x: &[f32], _a: &[f32], h: &[f32]) {
        let c = &mut self.counts[layer];
        let (ffn, dim) = (c.n_neurons, x.len() / (h.len() / c.n_neurons).max(1));
        let t = c.thresholds[self.ref_s];
        for (xt, ht) in x.chunks(dim).zip(h.chunks(ffn)) {
            c.add(ht);
            if let Some(data) = &mut self.data {
                let active = ht.iter().enumerate().filter(|(_, v)| v.abs() > t).map(|(j, _)| j);
                // Lengths are the model's own, so the push cannot fail.
                let _ = data[layer].push(xt, active);
            }
        }
    }
}

/// A sparse default must decode at least this much faster than dense: closer than that, the
/// timing noise of a shared machine decides, and dense is the safer choice.
const MIN_SPEEDUP: f64 = 1.03;

/// Decode steps timed per setting, and repetitions (the fastest counts).
const TIMED_STEPS: usize = 48;
const TIMED_REPS: usize = 3;

/// Rounds of the candidate's and dense's alternate timing that choose the default.
const RETIMED_ROUNDS: usize = 3;

/// Step 4: perplexity on the held-out slice for each setting; decode speed of those within the
/// budget; the default is the fastest of them, when it beats dense.
fn sweep(engine: &mut Engine, profile: &mut Profile, held: &[u32], params: &ProfileParams, progress: Progress<'_>) -> Result<()> {
    let path = std::path::PathBuf::from("(profile being made)");
    let ppl_params = PerplexityParams { ctx: params.ctx, windows: None, chunk: 128 };
    let mut criteria = vec![Criterion::FfnMagnitude, Criterion::Input, Criterion::Gate];
    if profile.predictors.iter().all(Option::is_some) && !profile.predictors.is_empty() {
        criteria.push(Criterion::Predictor);
    }
    let points: Vec<(Criterion, f32)> = std::iter::once((Criterion::Dense, 0.0))
        .chain(criteria.iter().flat_map(|&c| params.sparsities.iter().map(move |&s| (c, s))))
        .collect();
    let (mut dense, mut stopped) = (None::<SweepPoint>, Vec::new());
    let mut best: Option<SweepPoint> = None;
    for (i, &(criterion, sparsity)) in points.iter().enumerate() {
        progress("held-out sweep", i, points.len());
        if stopped.contains(&criterion) {
            continue;
        }
        engine.set_sparsity(profile, &path, criterion, sparsity)?;
        let r = perplexity_of_tokens(engine, held, &ppl_params, &mut |_, _| {})?;
        let mut point = SweepPoint { criterion, sparsity, ppl: r.ppl, achieved: r.sparsity.sparsity() as f32, decode_tps: None, skips_reads: None };
        let dense_ppl = dense.as_ref().map_or(r.ppl, |d| d.ppl);
        if criterion != Criterion::Dense && r.ppl > dense_ppl * (1.0 + params.ppl_budget) {
            stopped.push(criterion); // higher sparsities only lose more
        } else {
            point.decode_tps = Some(decode_rate(engine, held, params.ctx)?);
            let relu = engine.model.config.activation == Activation::Relu;
            let skips = engine.model.sparse.as_ref().is_some_and(|s| s.skips_reads(relu));
            point.skips_reads = (criterion != Criterion::Dense).then_some(skips);
            if criterion == Criterion::Dense {
                dense = Some(point.clone());
            } else if skips && best.as_ref().is_none_or(|b| point.decode_tps > b.decode_tps) {
                best = Some(point.clone());
            }
        }
        profile.meta.sweep.push(point);
    }
    progress("held-out sweep", points.len(), points.len());
    let dense = dense.ok_or(EngineError::Param { name: "sparsities", problem: "the sweep measured no dense point".into() })?;
    // The sweep timed dense first and each setting once; the candidate is timed again against
    // dense, alternately, so that neither the order nor one slow stretch of a shared machine
    // decides (the same dense products measured 234 and 276 tokens/s in one sweep).
    let (mut dense_tps, mut best_tps) = (0.0f64, 0.0f64);
    if let Some(b) = &best {
        for _ in 0..RETIMED_ROUNDS {
            engine.set_sparsity(profile, &path, b.criterion, b.sparsity)?;
            best_tps = best_tps.max(decode_rate(engine, held, params.ctx)?);
            engine.set_sparsity(profile, &path, Criterion::Dense, 0.0)?;
            dense_tps = dense_tps.max(decode_rate(engine, held, params.ctx)?);
        }
    }
    engine.set_sparsity(profile, &path, Criterion::Dense, 0.0)?;
    let budget = format!("+{:.1}% perplexity", params.ppl_budget * 100.0);
    let setting = |p: &SweepPoint, reason: String| DefaultSetting {
        criterion: p.criterion,
        sparsity: p.sparsity,
        dense_ppl: dense.ppl,
        ppl: p.ppl,
        heldout_tokens: held.len(),
        reason,
    };
    profile.meta.default = match best {
        Some(b) if best_tps >= dense_tps * MIN_SPEEDUP => {
            setting(&b, format!("fastest decode within {budget}: {best_tps:.1} vs {dense_tps:.1} tokens/s dense, timed alternately"))
        }
        Some(b) => {
            let why = format!("no setting within {budget} decodes {:.0}% faster than dense (best {} at {:.0}%: {best_tps:.1} vs {dense_tps:.1} tokens/s)", (MIN_SPEEDUP - 1.0) * 100.0, b.criterion.name(), b.sparsity * 100.0);
            setting(&dense, why)
        }
        None => setting(&dense, format!("no sparse setting within {budget} reads fewer bytes than dense")),
    };
    Ok(())
}

/// Decode tokens/s of the current setting: `TIMED_STEPS` held-out tokens fed one at a time after
/// the first, the fastest of `TIMED_REPS` repetitions.
fn decode_rate(engine: &Engine, held: &[u32], ctx: usize) -> Result<f64> {
    let steps = TIMED_STEPS.min(held.len()).min(ctx);
    let mut cache = engine.model.new_cache(ctx);
    let mut best = f64::INFINITY;
    for _ in 0..TIMED_REPS {
        cache.clear();
        let t0 = std::time::Instant::now();
        for &t in &held[..steps] {
            engine.forward(&[t], &mut cache, Logits::Last)?;
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(steps as f64 / best.max(1e-9))
}
