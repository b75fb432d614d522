//! The neurons-mode planner (PowerInfer's placement, solved greedily instead of by ILP), and
//! the upper bound that measures how far from optimal the greedy answer can be.
//!
//! Objective: the bytes per token the CPU no longer reads (an item's value = its activation
//! frequency × the bytes the CPU reads for it; attention and the output matrix are read every
//! token, frequency 1). Constraint: the GPU bytes of the chosen items + the scratch ≤ the budget.
//!
//! A layer's FFN is one "multiple-choice" item: its hottest k neurons (row by row, cost
//! k·(gate+up+q8 row), value the k largest frequencies), or the whole FFN as in the file (cheaper
//! per neuron: Q4 `down` instead of a Q8 column). Its options form points (cost, value); their
//! upper concave hull is a chain of steps of decreasing value per byte. A greedy run
//! 1. sorts all steps, attention parts and the output by value per byte and takes each in turn
//!    when it fits (exact, padded bytes), skipping those that do not;
//! 2. fills the bytes left with single neurons, hottest per byte first, in any layer;
//! 3. upgrades a layer to its whole FFN where the difference fits (often it frees bytes), then
//!    repeats 1-3 until nothing changes.
//!
//! The bound. The FFN steps are nearly divisible (a neuron is a few KiB), the attention parts
//! (with their KV cache) and the output matrix are not, and a plain LP bound takes the first of
//! those that does not fit in part, which makes it loose by up to that item's value. So the
//! bound enumerates the whole items instead: for every count m of attention parts and the output
//! in or out, the m most valuable attention parts at the cost of the m cheapest, plus the LP of
//! the FFN hull steps in the bytes left (a relaxation: every integral choice of a layer lies
//! under its hull, at no lower cost). The largest of these is ≥ the optimum. The planner runs
//! greedy freely and with the attention parts and output of the best few of these splits forced
//! in, and keeps the best run; the gap left is the FFN's last fraction of a step.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::footprint::Footprint;
use super::{Budget, Coverage, Freqs};

/// A layer's FFN on the GPU: its `k` hottest neurons row by row, or the whole FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ffn {
    Hot(usize),
    Whole,
}

/// What the planner chose, before it is written out as `LayerPlan`s.
pub(super) struct Choice {
    pub attention: Vec<bool>,
    pub ffn: Vec<Ffn>,
    pub output: bool,
    /// Bytes of everything chosen, scratch included (0 when nothing is).
    pub used: u64,
    pub coverage: Coverage,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Attention(usize),
    Output,
    Ffn { layer: usize, from: Ffn, to: Ffn },
}

#[derive(Clone, Copy, Debug)]
struct Item {
    step: Step,
    value: f64, // bytes per token the CPU no longer reads
    cost: f64,  // GPU bytes (per-neuron rows unpadded: never above the real cost)
}

impl Item {
    fn per_byte(&self) -> f64 {
        if self.cost > 0.0 { self.value / self.cost } else { f64::INFINITY }
    }
}

/// The items of a model, best value per byte first.
fn items(fp: &Footprint, freqs: &Freqs) -> Vec<Item> {
    let mut out = Vec::new();
    for (l, lf) in fp.layers.iter().enumerate() {
        out.push(Item { step: Step::Attention(l), value: lf.attention.cpu_read as f64, cost: lf.attention_gpu() as f64 });
        let hull = hull(fp, freqs, l);
        for w in hull.windows(2) {
            let ((a, ca, va), (b, cb, vb)) = (w[0], w[1]);
            out.push(Item { step: Step::Ffn { layer: l, from: a, to: b }, value: vb - va, cost: cb - ca });
        }
    }
    out.push(Item { step: Step::Output, value: fp.output.cpu_read as f64, cost: fp.output_gpu() as f64 });
    out.sort_by(|a, b| b.per_byte().total_cmp(&a.per_byte())); // stable: ties keep layer order
    out
}

/// The upper concave hull of a layer's FFN options as (option, cost, value), from `Hot(0)`.
fn hull(fp: &Footprint, freqs: &Freqs, l: usize) -> Vec<(Ffn, f64, f64)> {
    let lf = &fp.layers[l];
    let (c, per) = (lf.neuron_gpu() as f64, lf.neuron_cpu_read);
    let whole = lf.whole_ffn.gpu as f64;
    let whole_better = whole < c * fp.ffn_dim as f64;
    let mut points: Vec<(Ffn, f64, f64)> = (0..=fp.ffn_dim)
        .map(|k| (Ffn::Hot(k), k as f64 * c, freqs.prefix(l, k) * per))
        .filter(|p| !whole_better || p.1 < whole)
        .collect();
    if whole_better {
        points.push((Ffn::Whole, whole, freqs.prefix(l, fp.ffn_dim) * per));
    }
    let mut h: Vec<(Ffn, f64, f64)> = Vec::new();
    for p in points {
        while h.len() >= 2 {
            let (o, a) = (h[h.len() - 2], h[h.len() - 1]);
            let cross = (a.1 - o.1) * (p.2 - o.2) - (a.2 - o.2) * (p.1 - o.1);
            if cross >= 0.0 { h.pop(); } else { break; } // a on or under the line o→p
        }
        h.push(p);
    }
    h
}

/// The whole items apart from the FFN's steps, and the FFN's LP as a function of bytes.
struct Split {
    /// Attention parts, best value per byte first: (layer, value, GPU bytes).
    attention: Vec<(usize, f64, u64)>,
    /// Sum of the m largest attention values / of the m smallest attention costs (len n + 1).
    top_value: Vec<f64>,
    least_cost: Vec<u64>,
    /// The FFN hull steps by value per byte: cumulative cost and value (len steps + 1).
    ffn_cost: Vec<f64>,
    ffn_value: Vec<f64>,
}

impl Split {
    fn new(items: &[Item]) -> Split {
        let attention: Vec<(usize, f64, u64)> =
            items.iter().filter_map(|it| if let Step::Attention(l) = it.step { Some((l, it.value, it.cost as u64)) } else { None }).collect();
        let running = |mut v: Vec<f64>| -> Vec<f64> {
            v.insert(0, 0.0);
            (1..v.len()).for_each(|i| v[i] += v[i - 1]);
            v
        };
        let mut values: Vec<f64> = attention.iter().map(|a| a.1).collect();
        values.sort_by(|a, b| b.total_cmp(a));
        let mut costs: Vec<u64> = attention.iter().map(|a| a.2).collect();
        costs.sort_unstable();
        let least_cost = std::iter::once(0).chain(costs.iter().scan(0u64, |s, c| {
            *s = s.saturating_add(*c);
            Some(*s)
        }));
        let ffn = items.iter().filter(|it| matches!(it.step, Step::Ffn { .. }));
        Split {
            top_value: running(values),
            least_cost: least_cost.collect(),
            ffn_cost: running(ffn.clone().map(|it| it.cost).collect()),
            ffn_value: running(ffn.map(|it| it.value).collect()),
            attention,
        }
    }

    /// The LP value of the FFN steps in `room` bytes.
    fn ffn_lp(&self, room: f64) -> f64 {
        let i = self.ffn_cost.partition_point(|&c| c <= room) - 1; // ffn_cost[0] = 0 <= room
        match self.ffn_cost.get(i + 1) {
            Some(&next) => self.ffn_value[i] + (self.ffn_value[i + 1] - self.ffn_value[i]) * (room - self.ffn_cost[i]) / (next - self.ffn_cost[i]),
            None => self.ffn_value[i],
        }
    }

    /// Every feasible (attention parts, output) split with its upper bound, best first.
    fn bounds(&self, fp: &Footprint, budget: &Budget) -> Vec<(usize, bool, f64)> {
        let room = budget.vram.saturating_sub(fp.scratch);
        let mut out = Vec::new();
        for m in 0..self.least_cost.len() {
            for output in [false, true] {
                let cost = self.least_cost[m].saturating_add(if output { fp.output_gpu() } else { 0 });
                if budget.vram < fp.scratch || cost > room {
                    continue;
                }
                let whole = self.top_value[m] + if output { fp.output.cpu_read as f64 } else { 0.0 };
                out.push((m, output, whole + self.ffn_lp((room - cost) as f64)));
            }
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }
}

/// The upper bound on the value any placement within `budget` reaches (see the module header).
pub(super) fn upper_bound(fp: &Footprint, freqs: &Freqs, budget: &Budget) -> f64 {
    Split::new(&items(fp, freqs)).bounds(fp, budget).first().map_or(0.0, |b| b.2)
}

/// Greedy runs with the whole items of this many best splits forced in (besides a free run).
const FORCED_RUNS: usize = 4;

/// The greedy state: what is on the GPU and the exact bytes it takes.
struct State<'a> {
    fp: &'a Footprint,
    freqs: &'a Freqs,
    budget: &'a Budget,
    attention: Vec<bool>,
    ffn: Vec<Ffn>,
    output: bool,
    used: u64, // scratch + everything chosen
}

impl State<'_> {
    fn ffn_gpu(&self, l: usize, f: Ffn) -> u64 {
        let lf = &self.fp.layers[l];
        match f {
            Ffn::Hot(k) => lf.hot_ffn_gpu(k),
            Ffn::Whole => lf.whole_ffn.gpu,
        }
    }

    /// Bytes used after replacing `old` bytes by `new`, if that stays within the budget.
    fn fits(&self, old: u64, new: u64) -> Option<u64> {
        let after = (self.used - old).checked_add(new)?;
        (after <= self.budget.vram).then_some(after)
    }

    /// Takes `step` when it applies to the current state and fits; true if taken.
    fn take(&mut self, step: Step) -> bool {
        let lf = |l: usize| &self.fp.layers[l];
        let (old, new) = match step {
            Step::Attention(l) if !self.attention[l] => (0, lf(l).attention_gpu()),
            Step::Output if !self.output => (0, self.fp.output_gpu()),
            Step::Ffn { layer, from, to } if self.ffn[layer] == from => (self.ffn_gpu(layer, from), self.ffn_gpu(layer, to)),
            _ => return false,
        };
        let Some(after) = self.fits(old, new) else { return false };
        self.used = after;
        match step {
            Step::Attention(l) => self.attention[l] = true,
            Step::Output => self.output = true,
            Step::Ffn { layer, to, .. } => self.ffn[layer] = to,
        }
        true
    }

    /// Pass 2: single neurons, hottest per byte first across layers, while they fit.
    fn fill_neurons(&mut self) -> bool {
        let mut heap = BinaryHeap::new();
        let next = |s: &State, l: usize| -> Option<Next> {
            let Ffn::Hot(k) = s.ffn[l] else { return None };
            let lf = &s.fp.layers[l];
            (k < s.fp.ffn_dim).then(|| Next { per_byte: s.freqs.freq(l, k) * lf.neuron_cpu_read / lf.neuron_gpu().max(1) as f64, layer: l })
        };
        heap.extend((0..self.ffn.len()).filter_map(|l| next(self, l)));
        let mut changed = false;
        while let Some(Next { layer, .. }) = heap.pop() {
            let Ffn::Hot(k) = self.ffn[layer] else { continue };
            if self.take(Step::Ffn { layer, from: Ffn::Hot(k), to: Ffn::Hot(k + 1) }) {
                changed = true;
                heap.extend(next(self, layer));
            } // else the layer is closed: its next neurons cost the same and are colder
        }
        changed
    }

    /// Pass 3: the whole-FFN upgrade that fits and gains the most, once; true if one was made.
    fn upgrade_one(&mut self) -> bool {
        let best = (0..self.ffn.len())
            .filter_map(|l| match self.ffn[l] {
                Ffn::Hot(k) if self.fits(self.ffn_gpu(l, Ffn::Hot(k)), self.ffn_gpu(l, Ffn::Whole)).is_some() => {
                    Some((l, k, self.freqs.prefix(l, self.fp.ffn_dim) - self.freqs.prefix(l, k)))
                }
                _ => None,
            })
            .filter(|&(l, k, gain)| gain > 0.0 || self.ffn_gpu(l, Ffn::Whole) <= self.ffn_gpu(l, Ffn::Hot(k)))
            .max_by(|a, b| a.2.total_cmp(&b.2));
        match best {
            Some((layer, k, _)) => self.take(Step::Ffn { layer, from: Ffn::Hot(k), to: Ffn::Whole }),
            None => false,
        }
    }

    fn value(&self) -> f64 {
        let fp = self.fp;
        let layers: f64 = (0..fp.layers.len())
            .map(|l| {
                let lf = &fp.layers[l];
                let attn = if self.attention[l] { lf.attention.cpu_read as f64 } else { 0.0 };
                let k = match self.ffn[l] {
                    Ffn::Hot(k) => k,
                    Ffn::Whole => fp.ffn_dim,
                };
                attn + self.freqs.prefix(l, k) * lf.neuron_cpu_read
            })
            .sum();
        layers + if self.output { fp.output.cpu_read as f64 } else { 0.0 }
    }
}

struct Next {
    per_byte: f64,
    layer: usize,
}
impl PartialEq for Next {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Next {}
impl PartialOrd for Next {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Next {
    /// Best value per byte first; on ties the lower layer.
    fn cmp(&self, o: &Self) -> Ordering {
        self.per_byte.total_cmp(&o.per_byte).then(o.layer.cmp(&self.layer))
    }
}

/// Plans neurons mode. Requires `budget.vram >= fp.scratch` (the caller handles smaller ones).
pub(super) fn plan(fp: &Footprint, freqs: &Freqs, budget: &Budget) -> Choice {
    let items = items(fp, freqs);
    let split = Split::new(&items);
    let bounds = split.bounds(fp, budget);
    let mut best = greedy(fp, freqs, budget, &items, &[], false);
    for &(m, output, _) in bounds.iter().take(FORCED_RUNS) {
        let forced: Vec<usize> = split.attention[..m].iter().map(|a| a.0).collect();
        let run = greedy(fp, freqs, budget, &items, &forced, output);
        if run.value() > best.value() * (1.0 + 1e-12) {
            best = run;
        }
    }
    let taken = best.value();
    let nothing = !best.output && best.attention.iter().all(|a| !a) && best.ffn.iter().all(|f| *f == Ffn::Hot(0));
    Choice {
        used: if nothing { 0 } else { best.used },
        coverage: Coverage { taken, bound: bounds.first().map_or(0.0, |b| b.2).max(taken), total: total_value(fp, freqs) },
        attention: best.attention,
        ffn: best.ffn,
        output: best.output,
    }
}

/// One greedy run (passes 1-3 of the module header) after taking the `attention` parts and the
/// output (when `output`) first.
fn greedy<'a>(fp: &'a Footprint, freqs: &'a Freqs, budget: &'a Budget, items: &[Item], attention: &[usize], output: bool) -> State<'a> {
    let n = fp.layers.len();
    let mut s = State { fp, freqs, budget, attention: vec![false; n], ffn: vec![Ffn::Hot(0); n], output: false, used: fp.scratch };
    for &l in attention {
        s.take(Step::Attention(l));
    }
    if output {
        s.take(Step::Output);
    }
    // Each round adds value or frees bytes; a round without change ends it.
    for _round in 0..=n + 2 {
        let mut changed = false;
        for it in items {
            changed |= s.take(it.step);
        }
        changed |= s.fill_neurons();
        while s.upgrade_one() {
            changed = true;
        }
        if !changed {
            break;
        }
    }
    s
}

/// The value of putting everything on the GPU: the expected bytes the CPU reads per token.
pub(super) fn total_value(fp: &Footprint, freqs: &Freqs) -> f64 {
    let layers: f64 = fp.layers.iter().enumerate().map(|(l, lf)| lf.attention.cpu_read as f64 + freqs.prefix(l, fp.ffn_dim) * lf.neuron_cpu_read).sum();
    layers + fp.output.cpu_read as f64
}
