//! What the profiler gathers per layer while the model runs over the calibration corpus:
//! magnitude histograms (for thresholds at a target sparsity, as CATS and TEAL calibrate them),
//! per-neuron activation counts (hotness, as PowerInfer's profiler), natural zeros (ReLU).

/// Histogram bins per octave of |v|: thresholds are found within 2^(1/64) ≈ 1.1%.
const BINS_PER_OCTAVE: f32 = 64.0;
/// Smallest and largest octave tracked: |v| in [2^-30, 2^20); smaller counts as the first bin.
const MIN_OCTAVE: i32 = -30;
const OCTAVES: usize = 50;

/// A log-spaced histogram of |v| with exact zeros counted apart.
#[derive(Clone, Debug)]
pub struct MagnitudeHist {
    bins: Vec<u64>, // (OCTAVES * BINS_PER_OCTAVE)
    zeros: u64,
    total: u64,
}

impl Default for MagnitudeHist {
    fn default() -> Self {
        MagnitudeHist { bins: vec![0; OCTAVES * BINS_PER_OCTAVE as usize], zeros: 0, total: 0 }
    }
}

impl MagnitudeHist {
    pub fn add(&mut self, values: &[f32]) {
        for v in values {
            let a = v.abs();
            self.total += 1;
            if a == 0.0 || !a.is_finite() {
                self.zeros += u64::from(a == 0.0);
                continue;
            }
            self.bins[bin_of(a)] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Fraction of values that are exactly zero.
    pub fn zero_fraction(&self) -> f32 {
        if self.total == 0 { 0.0 } else { self.zeros as f32 / self.total as f32 }
    }

    /// The threshold `t` such that about `sparsity` of the values have `|v| < t` (zeros
    /// included); 0 when the zeros alone reach it.
    pub fn threshold(&self, sparsity: f32) -> f32 {
        let want = (sparsity.clamp(0.0, 1.0) as f64 * self.total as f64).round() as u64;
        let mut seen = self.zeros;
        if seen >= want {
            return 0.0;
        }
        for (i, &c) in self.bins.iter().enumerate() {
            if seen + c >= want {
                // Inside bin i: interpolate geometrically by the share of the bin needed.
                let frac = if c == 0 { 0.0 } else { (want - seen) as f32 / c as f32 };
                return bin_lower(i) * 2f32.powf(frac / BINS_PER_OCTAVE);
            }
            seen += c;
        }
        f32::INFINITY
    }
}

fn bin_of(a: f32) -> usize {
    let b = ((a.log2() - MIN_OCTAVE as f32) * BINS_PER_OCTAVE).floor();
    b.clamp(0.0, (OCTAVES as f32 * BINS_PER_OCTAVE) - 1.0) as usize
}

fn bin_lower(i: usize) -> f32 {
    2f32.powf(i as f32 / BINS_PER_OCTAVE + MIN_OCTAVE as f32)
}

/// Per-neuron counts for one layer at several thresholds (one per target sparsity).
#[derive(Clone, Debug)]
pub struct NeuronCounts {
    pub n_neurons: usize,
    pub thresholds: Vec<f32>, // (n_sparsities)
    pub active: Vec<u32>,     // (n_sparsities, n_neurons): tokens with |h| ≥ threshold
    pub sum_abs: Vec<f64>,    // (n_neurons)
    pub tokens: u64,
}

impl NeuronCounts {
    pub fn new(n_neurons: usize, thresholds: Vec<f32>) -> NeuronCounts {
        let s = thresholds.len();
        NeuronCounts { n_neurons, thresholds, active: vec![0; s * n_neurons], sum_abs: vec![0.0; n_neurons], tokens: 0 }
    }

    /// Adds one token's activations `h` (`(n_neurons)`).
    pub fn add(&mut self, h: &[f32]) {
        self.tokens += 1;
        for (j, v) in h.iter().enumerate() {
            let a = v.abs();
            self.sum_abs[j] += a as f64;
            for (s, t) in self.thresholds.iter().enumerate() {
                if a >= *t && a > 0.0 {
                    self.active[s * self.n_neurons + j] += 1;
                }
            }
        }
    }

    /// Activation frequency of each neuron at threshold `s`.
    pub fn frequency(&self, s: usize) -> Vec<f32> {
        let n = self.tokens.max(1) as f32;
        self.active[s * self.n_neurons..(s + 1) * self.n_neurons].iter().map(|&c| c as f32 / n).collect()
    }
}

/// Skew: the fewest neurons that hold `mass` of all activations (by frequency), as a fraction
/// of the neurons. A flat layer gives about `mass`; a skewed one much less.
pub fn neurons_for_mass(freq: &[f32], mass: f32) -> f32 {
    let mut f: Vec<f32> = freq.to_vec();
    f.sort_by(|a, b| b.total_cmp(a));
    let total: f32 = f.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut acc = 0.0;
    for (i, v) in f.iter().enumerate() {
        acc += v;
        if acc >= mass * total {
            return (i + 1) as f32 / f.len() as f32;
        }
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threshold splits a known distribution where its quantile lies (within a bin).
    #[test]
    fn threshold_is_the_quantile() {
        let values: Vec<f32> = (1..=10000).map(|i| i as f32 / 100.0).collect(); // uniform 0.01..100
        let mut h = MagnitudeHist::default();
        h.add(&values);
        for s in [0.1f32, 0.5, 0.9] {
            let t = h.threshold(s);
            let below = values.iter().filter(|v| **v < t).count() as f32 / values.len() as f32;
            assert!((below - s).abs() < 0.012, "sparsity {s}: threshold {t} leaves {below} below");
        }
        let mut z = MagnitudeHist::default();
        z.add(&[0.0, 0.0, 0.0, 1.0]);
        assert_eq!(z.threshold(0.5), 0.0);
        assert!((z.zero_fraction() - 0.75).abs() < 1e-6);
    }

    #[test]
    fn skew_of_flat_and_peaked_frequencies() {
        let flat = vec![0.5f32; 100];
        assert!((neurons_for_mass(&flat, 0.8) - 0.8).abs() < 0.011);
        let peaked: Vec<f32> = (0..100).map(|i| if i < 10 { 1.0 } else { 0.01 }).collect();
        assert!(neurons_for_mass(&peaked, 0.8) <= 0.1);
    }
}
