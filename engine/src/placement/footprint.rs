//! The footprint of a model: the bytes of each part the planner may put on the GPU, as the
//! executor allocates them there, and the bytes the CPU reads per token when the part stays on
//! the CPU (the value of moving it).
//!
//! Every device buffer is rounded up to a multiple of 4 bytes (wgpu pads buffer sizes so), so
//! the hot FFN rows of a layer cost `pad4(n·gate_row) + pad4(n·up_row) + pad4(n·q8_row)` for
//! `n` hot neurons, not `n` times a per-neuron figure.

use super::{q8_0_row_bytes, scratch_bytes, Budget};
use crate::config::ModelConfig;
use crate::model::Model;

/// `bytes` rounded up to a multiple of 4 (the size wgpu gives a buffer).
pub fn pad4(bytes: u64) -> u64 {
    bytes.div_ceil(4) * 4
}

/// Bytes of each placeable weight as stored in the model file, per layer and for the output
/// matrix (what `Model` knows; `Footprint::from_sizes` turns them into device buffers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightSizes {
    pub layers: Vec<LayerSizes>,
    /// `output.weight` (vocab, dim), or the tied embedding.
    pub output: u64,
}

/// Bytes of one layer's weights as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSizes {
    /// wq (q_dim, dim), wk (kv_dim, dim), wv (kv_dim, dim), wo (dim, q_dim).
    pub attention: [u64; 4],
    /// bq (q_dim), bk (kv_dim), bv (kv_dim), f32; 0 where the model has none.
    pub biases: [u64; 3],
    /// gate (ffn, dim), up (ffn, dim), down (dim, ffn).
    pub ffn: [u64; 3],
}

/// One part placed as a whole: its device bytes and what the CPU reads per token instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// Bytes allocated on the GPU (each buffer padded to 4).
    pub gpu: u64,
    /// Bytes the CPU reads per token when the part runs there (as in the file).
    pub cpu_read: u64,
}

/// The placeable parts of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFootprint {
    /// wq, wk, wv, wo and the Q/K/V biases; the KV cache (`kv`) comes with it.
    pub attention: Part,
    /// The layer's KV cache on the GPU: `ctx` positions × `sessions`, K and V in f32.
    pub kv: u64,
    /// K and V of one position, f32: `2 · kv_dim · 4` bytes (what decode reads per position).
    pub kv_per_position: u64,
    /// What each hot neuron adds to the layer's three GPU buffers: its gate row, its up row,
    /// and its `down` column as a Q8_0 row of `dim` (`q8_0_row_bytes(dim)`).
    pub neuron_rows: [u64; 3],
    /// Bytes the CPU reads for one active neuron: gate row + up row + its share of `down`.
    pub neuron_cpu_read: f64,
    /// gate, up and down as in the file: the layer's FFN wholly on the GPU.
    pub whole_ffn: Part,
}

impl LayerFootprint {
    /// GPU bytes of `n` hot neurons stored row by row (three padded buffers; 0 for none).
    pub fn hot_ffn_gpu(&self, n: usize) -> u64 {
        self.neuron_rows.iter().map(|r| pad4(r.saturating_mul(n as u64))).fold(0, u64::saturating_add)
    }

    /// GPU bytes per hot neuron before padding.
    pub fn neuron_gpu(&self) -> u64 {
        self.neuron_rows.iter().sum()
    }

    /// Attention weights and its KV cache: what putting this layer's attention on the GPU costs.
    pub fn attention_gpu(&self) -> u64 {
        self.attention.gpu.saturating_add(self.kv)
    }
}

/// The bytes of every part of a model the planner places, for KV caches of `ctx` positions ×
/// `sessions` (the budget's).
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    pub ctx: usize,
    pub sessions: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub layers: Vec<LayerFootprint>,
    /// The output matrix (vocab, dim); on the GPU it also needs `logits_scratch`.
    pub output: Part,
    /// GPU scratch buffers when anything runs on the GPU: `scratch_bytes(config, false)`.
    pub scratch: u64,
    /// Extra scratch for the logits when the output matrix is on the GPU.
    pub logits_scratch: u64,
}

impl Footprint {
    /// The footprint of a loaded model, with KV caches for `budget.ctx` × `budget.sessions`.
    pub fn of(model: &Model, budget: &Budget) -> Footprint {
        Footprint::from_sizes(&model.config, &model.weight_sizes(), budget)
    }

    /// The footprint of a model with `config` whose weights have the sizes `w`.
    pub fn from_sizes(c: &ModelConfig, w: &WeightSizes, budget: &Budget) -> Footprint {
        let kv_dim = (c.n_kv_heads * c.head_dim) as u64;
        let positions = (budget.ctx as u64).saturating_mul(budget.sessions as u64);
        let ffn = c.ffn_dim.max(1) as u64;
        let layers = w
            .layers
            .iter()
            .map(|l| {
                let [gate, up, down] = l.ffn;
                let attention_file: u64 = l.attention.iter().sum();
                LayerFootprint {
                    attention: Part {
                        gpu: l.attention.iter().chain(&l.biases).map(|b| pad4(*b)).sum(),
                        cpu_read: attention_file + l.biases.iter().sum::<u64>(),
                    },
                    kv: (2 * kv_dim * 4).saturating_mul(positions),
                    kv_per_position: 2 * kv_dim * 4,
                    neuron_rows: [gate / ffn, up / ffn, q8_0_row_bytes(c.dim)],
                    neuron_cpu_read: (gate + up + down) as f64 / ffn as f64,
                    whole_ffn: Part { gpu: pad4(gate) + pad4(up) + pad4(down), cpu_read: gate + up + down },
                }
            })
            .collect();
        let scratch = pad4(scratch_bytes(c, false));
        Footprint {
            ctx: budget.ctx,
            sessions: budget.sessions,
            dim: c.dim,
            ffn_dim: c.ffn_dim,
            vocab: c.vocab_size,
            layers,
            output: Part { gpu: pad4(w.output), cpu_read: w.output },
            scratch,
            logits_scratch: pad4(scratch_bytes(c, true)).saturating_sub(scratch),
        }
    }

    /// The output matrix and its logits buffer: what putting the output on the GPU costs.
    pub fn output_gpu(&self) -> u64 {
        self.output.gpu + self.logits_scratch
    }

    /// Every placeable part on the GPU (whole FFNs, attention with its KV cache, output,
    /// scratch): the budget at which the planner puts the whole model there.
    pub fn whole_model_gpu(&self) -> u64 {
        let layers = self.layers.iter().map(|l| l.attention_gpu().saturating_add(l.whole_ffn.gpu));
        layers.fold(self.scratch.saturating_add(self.output_gpu()), u64::saturating_add)
    }
}
