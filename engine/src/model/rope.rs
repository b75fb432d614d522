//! Rotary position embedding frequencies, as Hugging Face transformers computes them
//! (`modeling_rope_utils.py`: default, linear and llama3 variants) and as llama.cpp applies
//! GGUF `rope_freqs.weight` factors (frequency divided by the factor).

use crate::config::{ModelConfig, RopeScaling};

pub struct Rope {
    inv_freq: Vec<f32>, // (head_dim / 2)
    position_scale: f32,
    pub interleaved: bool,
}

impl Rope {
    /// `freq_factors`: the per-pair divisors of GGUF `rope_freqs.weight`, when the model has them.
    pub fn new(cfg: &ModelConfig, freq_factors: Option<&[f32]>) -> Rope {
        let d = cfg.head_dim;
        let mut inv_freq: Vec<f32> =
            (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / d as f32)).collect();
        let mut position_scale = 1.0;
        match &cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => position_scale = 1.0 / factor,
            RopeScaling::FreqFactors => {
                if let Some(f) = freq_factors {
                    for (v, f) in inv_freq.iter_mut().zip(f) {
                        *v /= f;
                    }
                }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_ctx } => {
                let old = *original_ctx as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for v in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *v;
                    if wavelen > low_wavelen {
                        *v /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *v = (1.0 - smooth) * *v / factor + smooth * *v;
                    }
                }
            }
        }
        Rope { inv_freq, position_scale, interleaved: cfg.rope_style == crate::config::RopeStyle::Interleaved }
    }

    /// Fills cos and sin tables for positions `start..start + n`, each `(n, head_dim / 2)`.
    pub fn tables(&self, start: usize, n: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        cos.clear();
        sin.clear();
        for p in start..start + n {
            let pos = p as f32 * self.position_scale;
            for f in &self.inv_freq {
                let a = pos * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }
}
