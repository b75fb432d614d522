//! The FFN of a block, h = act(gate·x) ⊙ (up·x), out = down·h, dense or sparse (see
//! `crate::sparsity`). Sparse decode follows PowerInfer's and Deja Vu's sparse FFN: only the
//! kept neurons' rows of gate and up (when a predictor or ReLU's sign tells them in advance)
//! and their per-neuron `down` rows are read.

use ember_kernels::cpu::sparse::{matvec_rows, RowsProduct};
use ember_kernels::cpu::{needs_q8, ops, Input, Product};
use ember_kernels::quant::q8::quantize_q8;
use ember_predictor::Criterion;

use super::{run_group, Layer, Model, Scratch};
use crate::config::Activation;
use crate::error::Result;
use crate::sparsity::{Bundle, Columns, DownScratch, SparseLayer};

/// Sees each layer's FFN input and intermediate during a forward pass (the profiler).
pub trait FfnObserver: Send {
    /// `x`: `(n, dim)` the normed FFN input; `a`: `(n, ffn_dim)` act(gate·x); `h`: `(n,
    /// ffn_dim)` a ⊙ (up·x), before any neuron is skipped.
    fn ffn(&mut self, layer: usize, x: &[f32], a: &[f32], h: &[f32]);
}

impl Model {
    pub(super) fn ffn(&self, l: usize, layer: &Layer, n: usize, s: &mut Scratch, obs: &mut Option<&mut dyn FfnObserver>) -> Result<()> {
        let sparse = self.sparse.as_ref().map(|sp| (sp.criterion, &sp.layers[l]));
        if let (Some((criterion, sl)), 1, None) = (sparse, n, &*obs) {
            return self.ffn_sparse_token(layer, criterion, sl, s);
        }
        if let (Some((Criterion::Input, sl)), None) = (sparse, &*obs) {
            // The input's small channels zeroed, as the decode step skips their columns.
            let (dim, mut kept) = (self.config.dim, 0u64);
            sl.mask_input(&mut s.h[..n * dim], |_, _| kept += 1);
            s.stats.gate_up_rows += gate_up_rows(self.config.ffn_dim, dim, kept);
        }
        let mut group = [
            Product { w: layer.w_gate.mat(), out: &mut s.gate }, // (n, ffn_dim)
            Product { w: layer.w_up.mat(), out: &mut s.up },     // (n, ffn_dim)
        ];
        run_group(&mut group, &s.h, n, &mut s.h_q8)?;
        let act = self.config.activation;
        // act(gate) kept apart for the observer and for the gate criterion's mask.
        let keep_act = obs.is_some() || matches!(sparse, Some((Criterion::Gate, _)));
        s.act.clear();
        for (g, u) in s.gate.iter_mut().zip(&s.up) {
            let a = activate(act, *g);
            if keep_act {
                s.act.push(a);
            }
            *g = a * u;
        }
        if let Some(obs) = obs {
            obs.ffn(l, &s.h, &s.act, &s.gate);
        }
        if let Some((criterion, sl)) = sparse {
            self.mask_tokens(criterion, sl, n, s);
        }
        run_group(&mut [Product { w: layer.w_down.mat(), out: &mut s.ffn_out }], &s.gate, n, &mut s.gate_q8)
    }

    /// Bytes a predicted neuron of layer `l` costs a sparse decode step: its rows of gate and
    /// up, and its column of the per-neuron `down`.
    pub(crate) fn sparse_neuron_bytes(&self, l: usize) -> usize {
        let layer = &self.layers[l];
        let down = Columns::bytes_per_neuron(layer.w_down.mat().dtype, self.config.dim);
        layer.w_gate.mat().row_bytes() + layer.w_up.mat().row_bytes() + down
    }

    /// Many tokens: dense products, the skipped neurons of each token zeroed before `down`
    /// (the input criterion's skipped channels were zeroed before gate and up).
    fn mask_tokens(&self, criterion: Criterion, sl: &SparseLayer, n: usize, s: &mut Scratch) {
        let (dim, ffn) = (self.config.dim, self.config.ffn_dim);
        for t in 0..n {
            let h = &mut s.gate[t * ffn..(t + 1) * ffn];
            let mut rows = 2 * ffn as u64;
            if criterion == Criterion::Gate {
                // Up only where |act(gate)| passes: the others' h is zero, as decode skips them.
                let a = &s.act[t * ffn..(t + 1) * ffn];
                let mut read = 0u64;
                for (v, a) in h.iter_mut().zip(a) {
                    if a.abs() > sl.g_threshold {
                        read += 1;
                    } else {
                        *v = 0.0;
                    }
                }
                rows = ffn as u64 + read;
            }
            if let (Criterion::Predictor, Some(p)) = (criterion, &sl.predictor) {
                p.predict(&s.h[t * dim..(t + 1) * dim], &mut s.sp.predict, &mut s.sp.cand);
                rows = 2 * s.sp.cand.len() as u64;
                let mut next = s.sp.cand.iter().peekable();
                for (j, v) in h.iter_mut().enumerate() {
                    if next.peek().is_some_and(|&&c| c as usize == j) {
                        next.next();
                    } else {
                        *v = 0.0;
                    }
                }
            }
            let mut kept = 0u64;
            for v in h.iter_mut() {
                if v.abs() > sl.threshold {
                    kept += 1;
                } else {
                    *v = 0.0;
                }
            }
            s.stats.kept += kept;
            if criterion != Criterion::Input {
                s.stats.gate_up_rows += rows;
            }
            s.stats.total += ffn as u64;
        }
    }

    /// One token: candidates from the predictor (or, for ReLU, from gate's sign), then only
    /// their rows; or, for the input criterion, gate and up over the kept input channels'
    /// columns; `down` over the kept neurons' per-neuron rows.
    fn ffn_sparse_token(&self, layer: &Layer, criterion: Criterion, sl: &SparseLayer, s: &mut Scratch) -> Result<()> {
        let act = self.config.activation;
        let ffn = self.config.ffn_dim;
        let sp = &mut s.sp;
        sp.idx.clear();
        sp.coef.clear();
        let predictor = sl.predictor.as_ref().filter(|_| criterion == Criterion::Predictor);
        let gate_t = gate_first(act, Some((criterion, sl)));
        let channels = (criterion == Criterion::Input).then(|| {
            // Zeroed too for the dense products, where the setting has no columns.
            sp.xi.clear();
            sp.xc.clear();
            sl.mask_input(&mut s.h[..self.config.dim], |i, v| {
                sp.xi.push(i);
                sp.xc.push(v);
            });
            sp.xi.len() as u64
        });
        if channels.is_some() && sl.gate_up(&sp.xi, &sp.xc, &mut s.gate[..ffn], &mut s.up[..ffn], &mut sp.down)? {
            keep_above(act, sl.threshold, &s.gate[..ffn], &s.up[..ffn], sp);
        } else if let Some(p) = predictor {
            p.predict(&s.h, &mut sp.predict, &mut sp.cand);
            match &sl.bundle {
                Some(b) => self.bundled_rows(b, s, sl.threshold)?,
                None => self.candidate_rows(layer, s, sl.threshold, false)?,
            }
        } else if let Some(t) = gate_t {
            // Gate first: up and down only where |act(gate)| passes.
            run_group(&mut [Product { w: layer.w_gate.mat(), out: &mut s.gate }], &s.h, 1, &mut s.h_q8)?;
            s.sp.cand.clear();
            s.sp.cand.extend(s.gate.iter().enumerate().filter(|(_, g)| activate(act, **g).abs() > t).map(|(j, _)| j as u32));
            self.candidate_rows(layer, s, sl.threshold, true)?;
        } else {
            let mut group = [
                Product { w: layer.w_gate.mat(), out: &mut s.gate },
                Product { w: layer.w_up.mat(), out: &mut s.up },
            ];
            run_group(&mut group, &s.h, 1, &mut s.h_q8)?;
            keep_above(act, sl.threshold, &s.gate[..ffn], &s.up[..ffn], &mut s.sp);
        }
        s.stats.kept += s.sp.idx.len() as u64;
        s.stats.gate_up_rows += match (channels, predictor, gate_t) {
            (Some(c), _, _) => gate_up_rows(ffn, self.config.dim, c),
            (None, Some(_), _) => 2 * s.sp.cand.len() as u64,
            (None, None, Some(_)) => (ffn + s.sp.cand.len()) as u64,
            (None, None, None) => 2 * ffn as u64,
        };
        s.stats.total += ffn as u64;
        self.down_kept(layer, Some(sl), s)
    }

    /// `s.ffn_out` = `down` over the kept neurons `s.sp.idx` (their h in `s.sp.coef`): from the
    /// setting's columns when it has them, else the dense product over h with the other
    /// neurons zero.
    pub(super) fn down_kept(&self, layer: &Layer, sl: Option<&SparseLayer>, s: &mut Scratch) -> Result<()> {
        let (dim, ffn) = (self.config.dim, self.config.ffn_dim);
        let sp = &mut s.sp;
        if let Some(sl) = sl {
            if sl.down(&sp.idx, &sp.coef, &mut s.ffn_out[..dim], &mut sp.down)? {
                return Ok(());
            }
        }
        s.gate[..ffn].fill(0.0);
        for (&j, &h) in sp.idx.iter().zip(&sp.coef) {
            s.gate[j as usize] = h;
        }
        run_group(&mut [Product { w: layer.w_down.mat(), out: &mut s.ffn_out }], &s.gate[..ffn], 1, &mut s.gate_q8)
    }

    /// h over the candidate neurons `s.sp.cand`, read from the hot-ordered bundle in position
    /// order (both rows of a neuron in one read).
    fn bundled_rows(&self, b: &Bundle, s: &mut Scratch, threshold: f32) -> Result<()> {
        let act = self.config.activation;
        let sp = &mut s.sp;
        sp.marks.clear();
        sp.marks.resize(b.pos.len(), false);
        for &j in &sp.cand {
            sp.marks[b.pos[j as usize] as usize] = true;
        }
        sp.pairs.clear();
        for (p, _) in sp.marks.iter().enumerate().filter(|(_, m)| **m) {
            sp.pairs.extend([2 * p as u32, 2 * p as u32 + 1]);
        }
        sp.cg.resize(sp.pairs.len(), 0.0); // (gate, up) of each candidate, in position order
        let w = b.mat();
        let quantize = needs_q8(&w);
        if quantize {
            quantize_q8(&s.h, &mut s.h_q8);
        }
        let input = Input { x: &s.h, q8: quantize.then_some(&s.h_q8), n_tokens: 1 };
        matvec_rows(&mut [RowsProduct { w, out: &mut sp.cg }], &sp.pairs, input)?;
        for (gu, pair) in sp.cg.chunks_exact(2).zip(sp.pairs.chunks_exact(2)) {
            let h = activate(act, gu[0]) * gu[1];
            if h.abs() > threshold {
                sp.idx.push(b.order[pair[0] as usize / 2]);
                sp.coef.push(h);
            }
        }
        Ok(())
    }

    /// h over the candidate neurons `s.sp.cand`: their rows of up, and of gate unless
    /// `gate_done` (then `s.gate` holds the whole gate and `s.h_q8` the quantized input); kept
    /// where |h| > `threshold`.
    fn candidate_rows(&self, layer: &Layer, s: &mut Scratch, threshold: f32, gate_done: bool) -> Result<()> {
        let act = self.config.activation;
        let sp = &mut s.sp;
        let c = sp.cand.len();
        sp.cg.resize(c, 0.0);
        sp.cu.resize(c, 0.0);
        let (wg, wu) = (layer.w_gate.mat(), layer.w_up.mat());
        let quantize = needs_q8(&wg) || needs_q8(&wu);
        if quantize && !gate_done {
            quantize_q8(&s.h, &mut s.h_q8);
        }
        let input = Input { x: &s.h, q8: quantize.then_some(&s.h_q8), n_tokens: 1 };
        if gate_done {
            matvec_rows(&mut [RowsProduct { w: wu, out: &mut sp.cu }], &sp.cand, input)?;
            for (g, &j) in sp.cg.iter_mut().zip(&sp.cand) {
                *g = s.gate[j as usize];
            }
        } else {
            let mut group = [RowsProduct { w: wg, out: &mut sp.cg }, RowsProduct { w: wu, out: &mut sp.cu }];
            matvec_rows(&mut group, &sp.cand, input)?;
        }
        for ((&j, g), u) in sp.cand.iter().zip(&sp.cg).zip(&sp.cu) {
            let h = activate(act, *g) * u;
            if h.abs() > threshold {
                sp.idx.push(j);
                sp.coef.push(h);
            }
        }
        Ok(())
    }
}

/// Pushes onto `sp.idx`/`sp.coef` the neurons whose h = act(gate)·up has |h| > `threshold`.
fn keep_above(act: Activation, threshold: f32, gate: &[f32], up: &[f32], sp: &mut SparseScratch) {
    for (j, (g, u)) in gate.iter().zip(up).enumerate() {
        let h = activate(act, *g) * u;
        if h.abs() > threshold {
            sp.idx.push(j as u32);
            sp.coef.push(h);
        }
    }
}

/// When gate runs before up (up and `down` then only for the neurons whose |act(gate)| is
/// above the returned value): ReLU's zeros (0, or the gate criterion's threshold), or the gate
/// criterion's calibrated threshold on another activation.
pub(super) fn gate_first(act: Activation, sparse: Option<(Criterion, &SparseLayer)>) -> Option<f32> {
    let gate_t = sparse.and_then(|(c, sl)| (c == Criterion::Gate).then_some(sl.g_threshold));
    match act {
        Activation::Relu => Some(gate_t.unwrap_or(0.0).max(0.0)),
        _ => gate_t,
    }
}

/// Rows of gate and up that reading `channels` of the `dim` input columns amounts to.
fn gate_up_rows(ffn: usize, dim: usize, channels: u64) -> u64 {
    (2 * ffn as u64 * channels).div_ceil(dim.max(1) as u64)
}

pub(super) fn activate(act: Activation, g: f32) -> f32 {
    match act {
        Activation::Silu => ops::silu(g),
        Activation::Relu => g.max(0.0),
        Activation::Gelu => ops::gelu(g),
    }
}

/// Buffers of the sparse FFN, kept with the sequence so decoding allocates nothing.
#[derive(Default)]
pub struct SparseScratch {
    pub(super) cand: Vec<u32>,   // candidate neurons (predicted, or gate > 0)
    pub(super) cg: Vec<f32>,     // (cand) gate rows
    pub(super) cu: Vec<f32>,     // (cand) up rows
    pub(super) xi: Vec<u32>,     // input criterion: kept input channels
    pub(super) xc: Vec<f32>,     // (xi) their values
    pub(super) idx: Vec<u32>,    // kept neurons
    pub(super) coef: Vec<f32>,   // (idx) their h
    pub(super) predict: ember_predictor::lowrank::PredictScratch,
    pub(super) down: DownScratch,
    pub(super) marks: Vec<bool>, // (ffn_dim) candidates by bundle position
    pub(super) pairs: Vec<u32>,  // bundle rows of the candidates: 2p, 2p + 1, …
    pub(super) hot_pos: Vec<u32>, // hybrid: candidates' positions in the GPU's hot list
    pub(super) cold: Vec<u32>,    // hybrid: candidates left to the CPU
    pub(super) gpu_out: Vec<f32>, // (dim) hybrid: the GPU's partial output
}
