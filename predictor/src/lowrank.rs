//! Low-rank activation predictors for sparse FFN inference.
//!
//! Follows Deja Vu (Liu et al. 2023, "Contextual Sparsity for Efficient LLMs at Inference
//! Time", §4.1) and PowerInfer (Song et al. 2023, §5.1): per layer, a two-layer MLP with a
//! narrow bottleneck reads the FFN input `x` (the normed hidden state) and guesses which FFN
//! neurons will be active for this token:
//!
//! ```text
//! logits = W2 · relu(W1 · x + b1) + b2        W1: (rank, dim)   W2: (n_out, rank)
//! active = { j : logits[j] > threshold }
//! ```
//!
//! * **data** — [`Dataset`]: the `x` rows and, per row, the set of truly active neurons as a
//!   bitset (what the profiler saw).
//! * **training** — [`train`]: Adam on binary cross-entropy, positives weighted by `pos_weight`
//!   (> 1 favours recall), f32 with manual backprop. Each mini-batch is cut into a fixed number
//!   of shards whose gradients are computed in parallel and summed in a fixed order, so the
//!   result depends on the seed only, not on the number of threads.
//! * **storage** — W1 and W2 are kept 8-bit: per output row an f32 scale `max|row| / 127` and
//!   i8 values (symmetric); biases stay f32.
//! * **calibration** — [`LowRankPredictor::calibrate`] picks the largest logit cut that still
//!   reaches a target recall on held-out data.
//! * **inference** — [`LowRankPredictor::predict`]: `rank·dim + n_out·rank` multiply-adds, no
//!   allocation once the caller's [`PredictScratch`] has grown. The first stage dots the 8-bit
//!   W1 rows with `x` in f32; the second, the larger, runs in integers against the hidden
//!   vector quantized to 7 bits (`crate::w2`), so its cost is that of W2's bytes.

use std::ops::Range;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors::Dtype;

use crate::error::{PredictorError, Result};
use crate::w2::{Stage2, Stage2Scratch};
pub use crate::w2::PredictKernel;

fn param(name: &'static str, problem: impl Into<String>) -> PredictorError {
    PredictorError::Param { name, problem: problem.into() }
}

/// Bit `j` of a row's active set.
fn bit(bits: &[u64], j: usize) -> bool {
    bits[j / 64] >> (j % 64) & 1 == 1
}

// ---- Data ---------------------------------------------------------------------------------

/// Training pairs: `x` rows and the active set of each row as a bitset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub dim: usize,
    pub n_out: usize,
    /// (n, dim) — FFN inputs, one row per token.
    pub x: Vec<f32>,
    /// (n, n_out.div_ceil(64)) — bit `j % 64` of word `j / 64` set when neuron `j` was active.
    pub active: Vec<u64>,
}

impl Dataset {
    pub fn new(dim: usize, n_out: usize) -> Dataset {
        Dataset { dim, n_out, x: Vec::new(), active: Vec::new() }
    }

    /// Words per row of `active`.
    pub fn words(&self) -> usize {
        self.n_out.div_ceil(64)
    }

    /// Appends one row. `x` must have `dim` finite values and every index be `< n_out`; on an
    /// error the dataset is left unchanged.
    pub fn push(&mut self, x: &[f32], active: impl IntoIterator<Item = usize>) -> Result<()> {
        if x.len() != self.dim {
            let problem = format!("{} values, but the dataset's dim is {}", x.len(), self.dim);
            return Err(param("x", problem));
        }
        if let Some(k) = x.iter().position(|v| !v.is_finite()) {
            return Err(param("x", format!("x[{k}] = {} is not finite", x[k])));
        }
        let mut bits = vec![0u64; self.words()]; // (words)
        for j in active {
            if j >= self.n_out {
                let problem = format!("neuron {j} out of range: the layer has {}", self.n_out);
                return Err(param("active", problem));
            }
            bits[j / 64] |= 1 << (j % 64);
        }
        self.x.extend_from_slice(x);
        self.active.extend_from_slice(&bits);
        Ok(())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match (self.words(), self.dim) {
            (0, 0) => 0,
            (0, dim) => self.x.len() / dim,
            (words, _) => self.active.len() / words,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` of `x`: (dim).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// Row `i` of `active`: (n_out.div_ceil(64)).
    pub fn active_row(&self, i: usize) -> &[u64] {
        let words = self.words();
        &self.active[i * words..(i + 1) * words]
    }

    pub fn is_active(&self, i: usize, j: usize) -> bool {
        bit(self.active_row(i), j)
    }

    /// `(kept, held_out)`: the last `round(len · held_out_fraction)` rows are held out (the
    /// fraction is clamped to [0, 1]; NaN holds out nothing). Deterministic, no shuffling.
    pub fn split(&self, held_out_fraction: f32) -> (Dataset, Dataset) {
        let n = self.len();
        let held = ((n as f64) * f64::from(held_out_fraction.clamp(0.0, 1.0))).round() as usize;
        let cut = n - held.min(n);
        let part = |rows: Range<usize>| Dataset {
            dim: self.dim,
            n_out: self.n_out,
            x: self.x[rows.start * self.dim..rows.end * self.dim].to_vec(),
            active: self.active[rows.start * self.words()..rows.end * self.words()].to_vec(),
        };
        (part(0..cut), part(cut..n))
    }

    /// Fraction of (row, neuron) pairs that are active; 0 for an empty dataset.
    pub fn active_fraction(&self) -> f32 {
        let cells = self.len() * self.n_out;
        if cells == 0 {
            return 0.0;
        }
        let ones: u64 = self.active.iter().map(|w| u64::from(w.count_ones())).sum();
        (ones as f64 / cells as f64) as f32
    }

    /// The number of rows, after checking that the public fields agree with each other.
    fn checked_len(&self, name: &'static str) -> Result<usize> {
        let n = self.len();
        if self.x.len() != n * self.dim || self.active.len() != n * self.words() {
            let problem = format!(
                "x has {} values and active {} words: not rows of dim {} and {} words",
                self.x.len(),
                self.active.len(),
                self.dim,
                self.words()
            );
            return Err(param(name, problem));
        }
        Ok(n)
    }
}

// ---- Configuration and the trained predictor ----------------------------------------------

/// How [`train`] runs. Choices are fields, not positional arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Width of the bottleneck (rows of W1).
    pub rank: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per Adam step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Weight of the positive (active) term of the cross-entropy; > 1 favours recall.
    pub pos_weight: f32,
    /// Seeds the initial weights and the per-epoch shuffles.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { rank: 64, epochs: 10, batch: 64, lr: 1e-3, pos_weight: 4.0, seed: 0 }
    }
}

/// One layer's trained predictor, weights 8-bit per output row.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankPredictor {
    dim: usize,
    w1_q: Vec<i8>,      // (rank, dim)
    w1_scale: Vec<f32>, // (rank)
    b1: Vec<f32>,       // (rank)
    /// W2 (n_out, rank) in the blocks of the integer second stage, its scales, b2; it holds
    /// `rank` and `n_out`.
    w2: Stage2,
    /// Logit cut: neuron `j` is predicted active when `logits[j] > threshold`.
    pub threshold: f32,
}

/// Quality of a predictor on a dataset, pooled over all (row, neuron) pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Truly active neurons that were predicted / truly active neurons (1 when none is active).
    pub recall: f32,
    /// Predicted neurons that were truly active / predicted neurons (1 when none is predicted).
    pub precision: f32,
    /// Mean `|predicted| / n_out`.
    pub predicted_fraction: f32,
    /// Mean `|active| / n_out`.
    pub active_fraction: f32,
}

/// The caller's scratch space of [`LowRankPredictor::predict`], reused from token to token.
#[derive(Clone, Debug, Default)]
pub struct PredictScratch {
    hidden: Vec<f32>, // (rank)
    logits: Vec<f32>, // (n_out)
    stage2: Stage2Scratch,
}

impl PredictScratch {
    /// The logits of the last prediction, one per neuron.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

// ---- Training (f32, manual backprop, Adam) ------------------------------------------------

/// Shards per mini-batch: fixed, so that the summation order (and the result) does not depend
/// on the number of threads.
const GRAD_SHARDS: usize = 8;
/// Standard deviation of W2 at initialisation, times `1/sqrt(rank)`: small, so the first
/// logits are close to the base-rate biases.
const W2_INIT: f32 = 0.1;
const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
/// Parameters per parallel task in the gradient reduction and the Adam update.
const PAR_CHUNK: usize = 1 << 14;

/// Offsets of the four parameter tensors in one flat f32 vector: [W1 | b1 | W2 | b2].
#[derive(Clone, Copy, Debug)]
struct Layout {
    dim: usize,
    rank: usize,
    n_out: usize,
}

impl Layout {
    fn w1(&self) -> Range<usize> {
        0..self.rank * self.dim
    }
    fn b1(&self) -> Range<usize> {
        let start = self.w1().end;
        start..start + self.rank
    }
    fn w2(&self) -> Range<usize> {
        let start = self.b1().end;
        start..start + self.n_out * self.rank
    }
    fn b2(&self) -> Range<usize> {
        let start = self.w2().end;
        start..start + self.n_out
    }
    fn len(&self) -> usize {
        self.b2().end
    }
    /// (W1, b1, W2, b2) views of a flat parameter or gradient vector.
    fn split_mut<'a>(&self, p: &'a mut [f32]) -> [&'a mut [f32]; 4] {
        let (w1, rest) = p.split_at_mut(self.w1().len());
        let (b1, rest) = rest.split_at_mut(self.rank);
        let (w2, b2) = rest.split_at_mut(self.w2().len());
        [w1, b1, w2, b2]
    }
}

fn check_config(cfg: &TrainConfig) -> Result<()> {
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if cfg.rank == 0 {
        return Err(param("rank", "must be at least 1"));
    }
    if cfg.epochs == 0 {
        return Err(param("epochs", "must be at least 1"));
    }
    if cfg.batch == 0 {
        return Err(param("batch", "must be at least 1"));
    }
    if !positive(cfg.lr) {
        return Err(param("lr", format!("{} is not a positive finite number", cfg.lr)));
    }
    if !positive(cfg.pos_weight) {
        return Err(param("pos_weight", format!("{} is not a positive finite number", cfg.pos_weight)));
    }
    Ok(())
}

/// Trains one layer's predictor on `data`; `progress(epoch, epochs, mean_loss)` is called after
/// each epoch with the mean weighted cross-entropy per (row, neuron) over that epoch. The
/// threshold starts at 0 (probability 1/2); see [`LowRankPredictor::calibrate`].
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(usize, usize, f32),
) -> Result<LowRankPredictor> {
    check_config(cfg)?;
    let n = data.checked_len("data")?;
    if n == 0 || data.dim == 0 || data.n_out == 0 {
        let problem = format!("empty dataset ({n} rows, dim {}, n_out {})", data.dim, data.n_out);
        return Err(param("data", problem));
    }
    let lay = Layout { dim: data.dim, rank: cfg.rank, n_out: data.n_out };
    if cfg.rank.checked_mul(data.dim + data.n_out + 1).is_none() {
        return Err(param("rank", format!("{} is too large for this layer", cfg.rank)));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut params = init_params(data, lay, &mut rng); // (lay.len())
    let mut adam = Adam::new(lay.len(), cfg.lr);
    let mut shards: Vec<Shard> = (0..GRAD_SHARDS.min(cfg.batch)).map(|_| Shard::new(lay)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss = 0.0f64;
        for batch in order.chunks(cfg.batch) {
            loss += batch_gradient(data, lay, &params, batch, &mut shards, cfg.pos_weight);
            let scale = 1.0 / (batch.len() * lay.n_out) as f32;
            adam.step(&mut params, &shards[0].grad, scale);
        }
        progress(epoch + 1, cfg.epochs, (loss / (n * lay.n_out) as f64) as f32);
    }
    if params.iter().any(|v| !v.is_finite()) {
        return Err(param("lr", format!("training diverged at lr {}: lower it", cfg.lr)));
    }
    Ok(LowRankPredictor::quantize(lay, &params))
}

/// W1 ~ N(0, 2 / E|x|²) (Kaiming for relu, scaled by the data's mean squared norm rather than
/// `dim`, so unnormalised inputs start well too), b1 = 0, W2 ~ N(0, (W2_INIT)² / rank),
/// b2 = logit of each neuron's smoothed base rate (matters when rates are skewed).
fn init_params(data: &Dataset, lay: Layout, rng: &mut StdRng) -> Vec<f32> {
    let n = data.len();
    let mut p = vec![0.0f32; lay.len()];
    let mean_sq = data.x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
    let std1 = (2.0 / mean_sq.max(1e-12)).sqrt() as f32;
    let std2 = W2_INIT / (lay.rank as f32).sqrt();
    let [w1, _b1, w2, b2] = lay.split_mut(&mut p);
    w1.iter_mut().for_each(|w| *w = std1 * normal(rng));
    w2.iter_mut().for_each(|w| *w = std2 * normal(rng));
    let mut counts = vec![0usize; lay.n_out]; // (n_out)
    for i in 0..n {
        let bits = data.active_row(i);
        counts.iter_mut().enumerate().for_each(|(j, c)| *c += usize::from(bit(bits, j)));
    }
    for (b, &c) in b2.iter_mut().zip(&counts) {
        let rate = (c as f64 + 0.5) / (n as f64 + 1.0);
        *b = (rate / (1.0 - rate)).ln() as f32;
    }
    p
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = 1.0 - rng.gen::<f32>(); // (0, 1]
    let u2: f32 = rng.gen::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Per-shard scratch: a full gradient and the per-row activations.
struct Shard {
    grad: Vec<f32>, // (lay.len()) — summed over the shard's rows
    pre: Vec<f32>,  // (rank) — W1·x + b1
    h: Vec<f32>,    // (rank) — relu(pre)
    dh: Vec<f32>,   // (rank) — ∂loss/∂h
    loss: f64,
}

impl Shard {
    fn new(lay: Layout) -> Shard {
        let rank = vec![0.0; lay.rank];
        Shard { grad: vec![0.0; lay.len()], pre: rank.clone(), h: rank.clone(), dh: rank, loss: 0.0 }
    }

    /// Sets `grad` and `loss` to the sums over `rows`.
    fn accumulate(&mut self, data: &Dataset, lay: Layout, params: &[f32], rows: &[usize], pw: f32) {
        self.grad.fill(0.0);
        self.loss = 0.0;
        for &i in rows {
            self.row(lay, params, data.row(i), data.active_row(i), pw);
        }
    }

    /// Forward and backward of one row, added into `grad`.
    fn row(&mut self, lay: Layout, params: &[f32], x: &[f32], bits: &[u64], pw: f32) {
        let (dim, rank) = (lay.dim, lay.rank);
        let (w1, b1) = (&params[lay.w1()], &params[lay.b1()]);
        let (w2, b2) = (&params[lay.w2()], &params[lay.b2()]);
        let [gw1, gb1, gw2, gb2] = lay.split_mut(&mut self.grad);
        for r in 0..rank {
            self.pre[r] = b1[r] + dot(&w1[r * dim..(r + 1) * dim], x);
            self.h[r] = self.pre[r].max(0.0);
        }
        self.dh.fill(0.0);
        for j in 0..lay.n_out {
            let w2j = &w2[j * rank..(j + 1) * rank];
            let z = b2[j] + dot(w2j, &self.h);
            let (loss, dz) = weighted_bce(z, bit(bits, j), pw);
            self.loss += f64::from(loss);
            gb2[j] += dz;
            axpy(dz, &self.h, &mut gw2[j * rank..(j + 1) * rank]);
            axpy(dz, w2j, &mut self.dh);
        }
        for r in 0..rank {
            if self.pre[r] > 0.0 {
                gb1[r] += self.dh[r];
                axpy(self.dh[r], x, &mut gw1[r * dim..(r + 1) * dim]);
            }
        }
    }
}

/// Loss and ∂loss/∂z of `-(pw·y·log σ(z) + (1−y)·log(1−σ(z)))`, stable for any `z`.
fn weighted_bce(z: f32, y: bool, pw: f32) -> (f32, f32) {
    let softplus = |t: f32| t.max(0.0) + (-t.abs()).exp().ln_1p();
    let sigmoid = if z >= 0.0 { 1.0 / (1.0 + (-z).exp()) } else { z.exp() / (1.0 + z.exp()) };
    if y {
        (pw * softplus(-z), pw * (sigmoid - 1.0))
    } else {
        (softplus(z), sigmoid)
    }
}

/// Fills `shards[0].grad` with the gradient summed over `batch` and returns the summed loss.
fn batch_gradient(
    data: &Dataset,
    lay: Layout,
    params: &[f32],
    batch: &[usize],
    shards: &mut [Shard],
    pw: f32,
) -> f64 {
    let per = batch.len().div_ceil(shards.len());
    let used = batch.len().div_ceil(per);
    let shards = &mut shards[..used];
    shards
        .par_iter_mut()
        .zip(batch.par_chunks(per))
        .for_each(|(shard, rows)| shard.accumulate(data, lay, params, rows, pw));
    let (first, rest) = shards.split_at_mut(1);
    first[0].grad.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, dst)| {
        for other in rest.iter() {
            let src = &other.grad[c * PAR_CHUNK..c * PAR_CHUNK + dst.len()];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
    });
    shards.iter().map(|s| s.loss).sum()
}

/// Adam (Kingma & Ba 2015) with bias correction.
struct Adam {
    m: Vec<f32>, // (params) — first moment
    v: Vec<f32>, // (params) — second moment
    t: i32,
    lr: f32,
}

impl Adam {
    fn new(len: usize, lr: f32) -> Adam {
        Adam { m: vec![0.0; len], v: vec![0.0; len], t: 0, lr }
    }

    /// One update with gradient `scale · grad`.
    fn step(&mut self, params: &mut [f32], grad: &[f32], scale: f32) {
        self.t = self.t.saturating_add(1);
        let bc1 = 1.0 - ADAM_BETA1.powi(self.t);
        let bc2 = 1.0 - ADAM_BETA2.powi(self.t);
        let lr = self.lr;
        params
            .par_chunks_mut(PAR_CHUNK)
            .zip(self.m.par_chunks_mut(PAR_CHUNK))
            .zip(self.v.par_chunks_mut(PAR_CHUNK))
            .zip(grad.par_chunks(PAR_CHUNK))
            .for_each(|(((p, m), v), g)| {
                for k in 0..p.len() {
                    let g = g[k] * scale;
                    m[k] = ADAM_BETA1 * m[k] + (1.0 - ADAM_BETA1) * g;
                    v[k] = ADAM_BETA2 * v[k] + (1.0 - ADAM_BETA2) * g * g;
                    p[k] -= lr * (m[k] / bc1) / ((v[k] / bc2).sqrt() + ADAM_EPS);
                }
            });
    }
}

// ---- Quantization and inference -----------------------------------------------------------

/// Symmetric 8-bit rows: (values, one scale per row), `scale = max|row| / 127`, `q = round(w /
/// scale)`; an all-zero row has scale 0.
fn quantize_rows(w: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / cols);
    for row in w.chunks_exact(cols) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        q.extend(row.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// f32 dot product; eight independent sums so the loop vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0f32; 8];
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ q[k]·x[k]` in f32; eight independent sums so the loop vectorizes.
#[inline(always)]
fn dot_i8(q: &[i8], x: &[f32]) -> f32 {
    let (cq, cx) = (q.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cq.remainder().iter().zip(cx.remainder()).map(|(&a, b)| f32::from(a) * b).sum();
    let mut acc = [0.0f32; 8];
    for (a, b) in cq.zip(cx) {
        for k in 0..8 {
            acc[k] += f32::from(a[k]) * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `dst += a · src`.
fn axpy(a: f32, src: &[f32], dst: &mut [f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += a * s);
}

impl LowRankPredictor {
    fn quantize(lay: Layout, params: &[f32]) -> LowRankPredictor {
        let (w1_q, w1_scale) = quantize_rows(&params[lay.w1()], lay.dim);
        let (w2_q, w2_scale) = quantize_rows(&params[lay.w2()], lay.rank);
        LowRankPredictor {
            dim: lay.dim,
            w1_q,
            w1_scale,
            b1: params[lay.b1()].to_vec(),
            w2: Stage2::new(&w2_q, lay.rank, w2_scale, params[lay.b2()].to_vec()),
            threshold: 0.0,
        }
    }

    /// Length of the input `x`.
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn rank(&self) -> usize {
        self.w2.rank
    }
    /// Number of FFN neurons predicted.
    pub fn n_out(&self) -> usize {
        self.w2.n_out
    }

    /// Writes into `out` the sorted indices of the neurons with `logit > threshold`; after the
    /// call `scratch.logits()` holds the logits. Nothing is allocated once the scratch and `out`
    /// have grown.
    ///
    /// # Panics
    /// If `x.len() != dim` — a caller bug, like an out-of-range slice index.
    pub fn predict(&self, x: &[f32], scratch: &mut PredictScratch, out: &mut Vec<u32>) {
        self.predict_with(PredictKernel::best(), x, scratch, out)
    }

    /// [`predict`](Self::predict) with a chosen second-stage body (a kernel the CPU lacks runs
    /// the portable one); every body gives the same logits bit for bit.
    pub fn predict_with(&self, kernel: PredictKernel, x: &[f32], scratch: &mut PredictScratch, out: &mut Vec<u32>) {
        self.run(kernel, x, scratch, Some(out));
    }

    /// The logits only, in `scratch.logits`.
    fn logits(&self, x: &[f32], scratch: &mut PredictScratch) {
        self.run(PredictKernel::best(), x, scratch, None);
    }

    /// `logits = W2 · relu(W1 · x + b1) + b2`: the first stage dots the 8-bit rows in f32 (its
    /// body compiled a second time for AVX2 + FMA, chosen at run time), the second runs in
    /// integers (`crate::w2`).
    fn run(&self, kernel: PredictKernel, x: &[f32], s: &mut PredictScratch, out: Option<&mut Vec<u32>>) {
        assert_eq!(x.len(), self.dim, "predictor input has {} values, expected dim {}", x.len(), self.dim);
        s.hidden.resize(self.rank(), 0.0); // (rank)
        s.logits.resize(self.n_out(), 0.0); // (n_out)
        self.hidden(x, &mut s.hidden);
        self.w2.run(kernel, &s.hidden, self.threshold, &mut s.stage2, &mut s.logits, out);
    }

    fn hidden(&self, x: &[f32], hidden: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { self.hidden_avx2(x, hidden) };
        }
        self.hidden_body(x, hidden)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hidden_avx2(&self, x: &[f32], hidden: &mut [f32]) {
        self.hidden_body(x, hidden)
    }

    #[inline(always)]
    fn hidden_body(&self, x: &[f32], hidden: &mut [f32]) {
        let dim = self.dim;
        for (r, h) in hidden.iter_mut().enumerate() {
            let q = &self.w1_q[r * dim..(r + 1) * dim];
            *h = (self.b1[r] + self.w1_scale[r] * dot_i8(q, x)).max(0.0);
        }
    }

    fn check_data(&self, data: &Dataset, name: &'static str) -> Result<usize> {
        let n = data.checked_len(name)?;
        if data.dim != self.dim || data.n_out != self.n_out() {
            let problem = format!(
                "dataset is dim {} × n_out {}, the predictor dim {} × n_out {}",
                data.dim, data.n_out, self.dim, self.n_out()
            );
            return Err(param(name, problem));
        }
        Ok(n)
    }

    /// Sets `threshold` to the largest logit cut for which the fraction of truly active neurons
    /// predicted, pooled over `val`, reaches `target_recall` (in (0, 1]).
    pub fn calibrate(&mut self, val: &Dataset, target_recall: f32) -> Result<()> {
        let n = self.check_data(val, "val")?;
        if !(target_recall > 0.0 && target_recall <= 1.0) {
            return Err(param("target_recall", format!("{target_recall} is not in (0, 1]")));
        }
        let mut active: Vec<f32> = (0..n)
            .into_par_iter()
            .map_init(
                PredictScratch::default,
                |scratch, i| {
                    self.logits(val.row(i), scratch);
                    let bits = val.active_row(i);
                    scratch
                        .logits
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| bit(bits, *j))
                        .map(|(_, &z)| z)
                        .collect::<Vec<f32>>()
                },
            )
            .flatten()
            .collect();
        if active.is_empty() {
            return Err(param("val", "no active neuron to calibrate on"));
        }
        // The 1e-6 margin keeps an f32 target such as 0.3 (0.30000001) from asking for one
        // more neuron than intended.
        let total = active.len() as f64;
        let need = (f64::from(target_recall) * total * (1.0 - 1e-6)).ceil().clamp(1.0, total) as usize;
        // The need-th largest active logit must stay strictly above the cut.
        let (_, &mut kth, _) = active.select_nth_unstable_by(need - 1, |a, b| b.total_cmp(a));
        if kth.is_nan() {
            return Err(param("val", "the predictor gives NaN logits on this data"));
        }
        self.threshold = kth.next_down();
        Ok(())
    }

    /// Recall, precision, predicted and active fractions on `data` at the current threshold.
    pub fn evaluate(&self, data: &Dataset) -> Result<Metrics> {
        let n = self.check_data(data, "data")?;
        let (hit, predicted, active) = (0..n)
            .into_par_iter()
            .map_init(
                || (PredictScratch::default(), Vec::new()),
                |(scratch, out), i| {
                    self.predict(data.row(i), scratch, out);
                    let bits = data.active_row(i);
                    let hit = out.iter().filter(|&&j| bit(bits, j as usize)).count() as u64;
                    let active: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
                    (hit, out.len() as u64, active)
                },
            )
            .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        let ratio = |a: u64, b: u64, empty: f32| if b == 0 { empty } else { (a as f64 / b as f64) as f32 };
        let cells = (n * self.n_out()) as u64;
        Ok(Metrics {
            recall: ratio(hit, active, 1.0),
            precision: ratio(hit, predicted, 1.0),
            predicted_fraction: ratio(predicted, cells, 0.0),
            active_fraction: ratio(active, cells, 0.0),
        })
    }

    /// Stored size in bytes: the i8 weights, the f32 scales and biases, the threshold.
    pub fn bytes(&self) -> usize {
        let floats = self.w1_scale.len() + self.b1.len() + self.w2.scale.len() + self.w2.bias.len() + 1;
        self.w1_q.len() + self.w2.weight_bytes() + 4 * floats
    }

    /// Multiply-adds per token: `rank·dim + n_out·rank`.
    pub fn flops(&self) -> usize {
        self.rank() * self.dim + self.n_out() * self.rank()
    }
}

// ---- Serialization (named tensors for a safetensors file) ---------------------------------

/// A tensor as `to_tensors` gives it: (name, dtype, shape, little-endian bytes).
pub type NamedTensor = (String, Dtype, Vec<usize>, Vec<u8>);
/// A tensor as `from_tensors` takes it: (dtype, shape, little-endian bytes).
pub type TensorData = (Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

impl LowRankPredictor {
    /// The predictor as named tensors, names relative to the caller's prefix:
    /// `w1.q` I8 (rank, dim), `w1.scale` F32 (rank), `b1` F32 (rank), `w2.q` I8 (n_out, rank),
    /// `w2.scale` F32 (n_out), `b2` F32 (n_out), `threshold` F32 (1). Little-endian bytes.
    pub fn to_tensors(&self) -> Vec<NamedTensor> {
        let i8_bytes = |q: &[i8]| q.iter().map(|&v| v as u8).collect::<Vec<u8>>();
        let (dim, rank, n_out) = (self.dim, self.rank(), self.n_out());
        vec![
            ("w1.q".into(), Dtype::I8, vec![rank, dim], i8_bytes(&self.w1_q)),
            ("w1.scale".into(), Dtype::F32, vec![rank], f32_bytes(&self.w1_scale)),
            ("b1".into(), Dtype::F32, vec![rank], f32_bytes(&self.b1)),
            ("w2.q".into(), Dtype::I8, vec![n_out, rank], i8_bytes(&self.w2.rows())),
            ("w2.scale".into(), Dtype::F32, vec![n_out], f32_bytes(&self.w2.scale)),
            ("b2".into(), Dtype::F32, vec![n_out], f32_bytes(&self.w2.bias)),
            ("threshold".into(), Dtype::F32, vec![1], f32_bytes(&[self.threshold])),
        ]
    }

    /// The inverse of [`to_tensors`](Self::to_tensors): `get(prefix + name)` gives each tensor
    /// (the prefix carries its own separator, e.g. `"blk.3.predictor."`). A missing tensor, a
    /// wrong dtype or shape, a short buffer or a non-finite weight is a
    /// [`PredictorError::File`] whose `field` is the full tensor name.
    pub fn from_tensors(
        path: &Path,
        prefix: &str,
        get: &dyn Fn(&str) -> Option<TensorData>,
    ) -> Result<LowRankPredictor> {
        let t = TensorReader { path, prefix, get };
        let (rank, dim, w1_q) = t.i8_matrix("w1.q", None)?;
        let (n_out, _, w2_q) = t.i8_matrix("w2.q", Some(rank))?;
        let threshold = t.f32_vector("threshold", 1)?[0];
        if threshold.is_nan() {
            return Err(t.error("threshold", "NaN".into()));
        }
        Ok(LowRankPredictor {
            dim,
            w1_q,
            w1_scale: t.finite("w1.scale", rank)?,
            b1: t.finite("b1", rank)?,
            w2: Stage2::new(&w2_q, rank, t.finite("w2.scale", n_out)?, t.finite("b2", n_out)?),
            threshold,
        })
    }
}

/// Reads and checks the tensors of one predictor.
struct TensorReader<'a> {
    path: &'a Path,
    prefix: &'a str,
    get: &'a dyn Fn(&str) -> Option<TensorData>,
}

impl TensorReader<'_> {
    fn error(&self, name: &str, problem: String) -> PredictorError {
        let field = format!("{}{name}", self.prefix);
        PredictorError::File { path: self.path.to_path_buf(), field, problem }
    }

    /// The tensor's shape and bytes, after checking its dtype and byte count.
    fn fetch(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, Vec<u8>)> {
        let Some((found, shape, bytes)) = (self.get)(&format!("{}{name}", self.prefix)) else {
            return Err(self.error(name, "missing tensor".into()));
        };
        if found != dtype {
            return Err(self.error(name, format!("dtype {found:?}, expected {dtype:?}")));
        }
        let size = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if size != Some(bytes.len()) {
            return Err(self.error(name, format!("{} bytes for shape {shape:?}", bytes.len())));
        }
        Ok((shape, bytes))
    }

    /// An I8 (rows, cols) matrix, both non-zero; `cols` checked when given.
    fn i8_matrix(&self, name: &str, cols: Option<usize>) -> Result<(usize, usize, Vec<i8>)> {
        let (shape, bytes) = self.fetch(name, Dtype::I8)?;
        let expected = cols.map_or("(rows, cols)".to_string(), |c| format!("(rows, {c})"));
        match shape[..] {
            [rows, c] if rows > 0 && c > 0 && cols.is_none_or(|want| want == c) => {
                Ok((rows, c, bytes.iter().map(|&b| b as i8).collect()))
            }
            _ => Err(self.error(name, format!("shape {shape:?}, expected non-empty {expected}"))),
        }
    }

    /// An F32 vector of shape (len).
    fn f32_vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (shape, bytes) = self.fetch(name, Dtype::F32)?;
        if shape != [len] {
            return Err(self.error(name, format!("shape {shape:?}, expected [{len}]")));
        }
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        Ok(values.collect())
    }

    /// An F32 vector of shape (len) with finite values only.
    fn finite(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.f32_vector(name, len)?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(k) => Err(self.error(name, format!("value {k} is {}", v[k]))),
            None => Ok(v),
        }
    }
}
