//! Sampling: logits → next token.
//!
//! Follows llama.cpp's default sampler chain (`src/llama-sampling.cpp`, `common/sampling.cpp`):
//!
//! ```text
//! penalties → top-k → top-p → min-p → temperature → draw
//! ```
//!
//! * **penalties** (over the last `last_n` tokens of the history): repeat (`logit / r` if the
//!   logit is positive, else `logit * r`), then `− count·frequency − presence` for every token
//!   seen at least once;
//! * **top-k** keeps the `k` largest logits (ties → lower id first);
//! * **top-p** keeps the smallest prefix, by decreasing probability, whose cumulative probability
//!   reaches `p` (always at least one token);
//! * **min-p** drops the tokens whose probability is below `min_p · max_prob`;
//! * **temperature** scales the surviving logits, and one token is drawn from their softmax
//!   with a seeded [`StdRng`] (same seed ⇒ same sequence).
//!
//! As in llama.cpp, top-p and min-p measure probabilities *before* temperature (at T = 1):
//! the set of candidates does not depend on the temperature, only the draw among them does.
//!
//! `Greedy` is the arg-max after penalties (ties → lowest id). NaN logits are treated as −∞
//! (never chosen) and +∞ as the largest finite value, so no input makes the sampler panic.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Arg-max (what `--temperature 0` means).
    Greedy,
    /// Softmax at `temperature`, restricted by top-k (0 = off), top-p (1.0 = off) and min-p (0.0 = off).
    /// `temperature == 0` picks the most likely survivor, like `Greedy`.
    Sample { temperature: f32, top_k: usize, top_p: f32, min_p: f32 },
}

impl Default for Strategy {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05.
    fn default() -> Self {
        Strategy::Sample { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05 }
    }
}

impl Strategy {
    /// The plainest strategy that chooses the same tokens: `Sample` at temperature 0 is
    /// `Greedy` (llama.cpp's convention, what `--temperature 0` and Python's `temperature=0`
    /// mean); anything else is returned as it is. Faces build `Sample { … }` from their knobs
    /// and call this.
    pub fn canonical(self) -> Strategy {
        match self {
            Strategy::Sample { temperature: 0.0, .. } => Strategy::Greedy,
            other => other,
        }
    }
}

/// Penalties on tokens already present in the last `last_n` tokens of the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Penalties {
    pub repeat: f32,    // 1.0 = off; llama.cpp style: logit / p if > 0 else logit * p
    pub presence: f32,  // 0.0 = off
    pub frequency: f32, // 0.0 = off
    pub last_n: usize,  // 0 = off
}

impl Default for Penalties {
    /// llama.cpp's defaults: all off, window of 64 tokens.
    fn default() -> Self {
        Penalties { repeat: 1.0, presence: 0.0, frequency: 0.0, last_n: 64 }
    }
}

impl Penalties {
    /// True when applying these penalties changes nothing.
    pub fn is_off(&self) -> bool {
        self.last_n == 0 || (self.repeat == 1.0 && self.presence == 0.0 && self.frequency == 0.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub strategy: Strategy,
    pub penalties: Penalties,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's default chain with seed 0 (a face that wants fresh output picks a random seed).
    fn default() -> Self {
        SamplingParams { strategy: Strategy::default(), penalties: Penalties::default(), seed: 0 }
    }
}

impl SamplingParams {
    /// Arg-max, no penalties.
    pub fn greedy() -> Self {
        SamplingParams { strategy: Strategy::Greedy, ..SamplingParams::default() }
    }

    /// Checks every number; the error names the parameter and the allowed range.
    pub fn validate(&self) -> Result<()> {
        if let Strategy::Sample { temperature, top_p, min_p, .. } = self.strategy {
            check(temperature.is_finite() && temperature >= 0.0, "temperature", temperature, "a finite number ≥ 0")?;
            check(top_p > 0.0 && top_p <= 1.0, "top_p", top_p, "in (0, 1]")?;
            check((0.0..1.0).contains(&min_p), "min_p", min_p, "in [0, 1)")?;
        }
        let p = &self.penalties;
        check(p.repeat.is_finite() && p.repeat > 0.0, "repeat_penalty", p.repeat, "a finite number > 0 (1 = off)")?;
        check(p.presence.is_finite(), "presence_penalty", p.presence, "a finite number (0 = off)")?;
        check(p.frequency.is_finite(), "frequency_penalty", p.frequency, "a finite number (0 = off)")?;
        Ok(())
    }
}

fn check(ok: bool, name: &'static str, value: f32, allowed: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(EngineError::Param { name, problem: format!("{value} is not allowed: must be {allowed}") })
    }
}

/// One token still in the running.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Decreasing logit, ties → lower id first: a total order, so every cut is deterministic.
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// The best candidate by [`by_rank`]; `None` when there is none.
fn best(cands: &[Candidate]) -> Option<Candidate> {
    cands.iter().copied().min_by(by_rank)
}

/// A sampler holds its parameters, its random state and the per-call scratch buffers (so a call
/// allocates nothing once the buffers have grown to the vocabulary size).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    cands: Vec<Candidate>, // (vocab) after penalties, then cut down by top-k / min-p / top-p
    window: Vec<u32>,      // (≤ last_n) the penalty window, sorted to count repeats
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, cands: Vec::new(), window: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restarts the random sequence as if the sampler had been created with `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = StdRng::seed_from_u64(seed);
    }

    /// The next token, given the logits of the last position and the tokens so far.
    /// An empty `logits` slice yields token 0; if every logit is NaN or −∞ the lowest id wins.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.load_logits(logits);
        self.apply_penalties(history);
        match self.params.strategy {
            Strategy::Greedy => best(&self.cands).map_or(0, |c| c.id),
            Strategy::Sample { temperature, top_k, top_p, min_p } => {
                self.sample_chain(temperature, top_k, top_p, min_p)
            }
        }
    }

    /// The logits after penalties (and NaN/∞ clean-up), as the greedy and sampling paths see
    /// them: for tests and for callers that want to inspect the adjusted distribution.
    pub fn penalized_logits(&mut self, logits: &[f32], history: &[u32]) -> Vec<f32> {
        self.load_logits(logits);
        self.apply_penalties(history);
        self.cands.iter().map(|c| c.logit).collect()
    }

    /// Fills `cands` with every token in id order, NaN → −∞.
    fn load_logits(&mut self, logits: &[f32]) {
        self.cands.clear();
        self.cands.extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
            id: i as u32,
            logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
        }));
    }

    /// Repeat, frequency and presence penalties over the last `last_n` tokens of `history`.
    /// Runs while `cands` is still indexed by token id. Clamps +∞ (input or overflow) to f32::MAX.
    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params.penalties;
        if !p.is_off() {
            let start = history.len().saturating_sub(p.last_n);
            self.window.clear();
            self.window.extend_from_slice(&history[start..]);
            self.window.sort_unstable();
            for run in self.window.chunk_by(|a, b| a == b) {
                let Some(c) = self.cands.get_mut(run[0] as usize) else { continue };
                if c.logit > 0.0 {
                    c.logit /= p.repeat;
                } else {
                    c.logit *= p.repeat;
                }
                c.logit -= run.len() as f32 * p.frequency + p.presence;
                if c.logit.is_nan() {
                    c.logit = f32::NEG_INFINITY;
                }
            }
        }
        for c in self.cands.iter_mut().filter(|c| c.logit == f32::INFINITY) {
            c.logit = f32::MAX;
        }
    }

    /// top-k → top-p → min-p → temperature → draw, over `cands`.
    fn sample_chain(&mut self, temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> u32 {
        self.cands.retain(|c| c.logit > f32::NEG_INFINITY);
        let Some(top) = best(&self.cands) else {
            return 0; // every logit was NaN or −∞ (or the vocabulary is empty)
        };
        if top_k > 0 && top_k < self.cands.len() {
            self.cands.select_nth_unstable_by(top_k - 1, by_rank);
            self.cands.truncate(top_k);
        }
        if temperature == 0.0 {
            return top.id;
        }
        // Unnormalised probabilities at T = 1, relative to the best token (which has 1).
        let max = top.logit;
        let weight = |c: &Candidate| ((c.logit - max) as f64).exp();
        if top_p < 1.0 {
            let total: f64 = self.cands.iter().map(weight).sum();
            // Top-p then min-p both keep a prefix of the ranked list, and min-p's threshold is
            // relative to the best token, which top-p always keeps: so min-p may go first, which
            // shrinks what must be ranked. Top-p still measures against the total before min-p.
            self.cut_min_p(max, min_p);
            self.cut_top_p(top_p as f64 * total, weight);
        } else {
            self.cut_min_p(max, min_p);
        }
        self.draw(max, temperature)
    }

    /// Keeps the tokens with `p ≥ min_p · p_max`, i.e. `logit ≥ max + ln(min_p)`.
    fn cut_min_p(&mut self, max: f32, min_p: f32) {
        if min_p > 0.0 {
            let threshold = max + min_p.ln();
            self.cands.retain(|c| c.logit >= threshold);
        }
    }

    /// Keeps the smallest ranked prefix whose weight reaches `target`. Ranks a growing prefix
    /// (partial selection) instead of sorting the whole vocabulary: usually a few hundred tokens
    /// carry the mass.
    fn cut_top_p(&mut self, target: f64, weight: impl Fn(&Candidate) -> f64) {
        let n = self.cands.len();
        let mut k = n.min(256);
        loop {
            if k < n {
                self.cands.select_nth_unstable_by(k - 1, by_rank);
            }
            self.cands[..k].sort_unstable_by(by_rank);
            let mut cum = 0.0;
            for i in 0..k {
                cum += weight(&self.cands[i]);
                if cum >= target {
                    self.cands.truncate(i + 1);
                    return;
                }
            }
            if k == n {
                return; // rounding kept the sum just below target: keep everything
            }
            k = n.min(k * 4);
        }
    }

    /// Draws one of `cands` from the softmax of `logit / temperature`.
    fn draw(&mut self, max: f32, temperature: f32) -> u32 {
        let inv_t = 1.0 / temperature as f64;
        let weight = |c: &Candidate| ((c.logit - max) as f64 * inv_t).exp();
        let total: f64 = self.cands.iter().map(weight).sum();
        let mut u = self.rng.gen::<f64>() * total;
        for c in &self.cands {
            let w = weight(c);
            if u < w {
                return c.id;
            }
            u -= w;
        }
        // Rounding left `u` just past the end: the last token with any weight.
        self.cands.iter().rev().find(|c| weight(c) > 0.0).or(self.cands.last()).map_or(0, |c| c.id)
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;

    #[test]
    fn temperature_zero_is_greedy() {
        let sample = |temperature| Strategy::Sample { temperature, top_k: 40, top_p: 0.95, min_p: 0.05 };
        assert_eq!(sample(0.0).canonical(), Strategy::Greedy);
        assert_eq!(sample(0.7).canonical(), sample(0.7));
        assert_eq!(Strategy::Greedy.canonical(), Strategy::Greedy);
    }
}
