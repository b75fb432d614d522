//! Placement: which parts of the model live on the GPU and which on the CPU, for a VRAM budget.
//! (SKELETON: the types the executor consumes; the planner is being written.)
//!
//! `Placement::plan` is a pure function of the model's footprint, the profile's neuron
//! frequencies and the budget. It never exceeds the budget, and every decision records why.

use crate::config::ModelConfig;

/// How the model is split between the devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// Attention of chosen layers and the hottest FFN neurons of every layer on the GPU, the
    /// cold neurons on the CPU, both at once (PowerInfer).
    #[default]
    Neurons,
    /// Whole layers on the GPU, the rest on the CPU, run in turn (llama.cpp's `-ngl`).
    Layers,
}

/// Where a part runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Gpu,
    Cpu,
}

/// Tokens the executor runs through the GPU per call; a longer prompt goes in chunks of this
/// many, so the GPU scratch buffers have a fixed size.
pub const GPU_BATCH: usize = 32;

/// Bytes of a Q8_0 row of `n` elements (the per-neuron `down` rows on the GPU).
pub fn q8_0_row_bytes(n: usize) -> u64 {
    (n / 32 * 34) as u64
}

/// Device memory the executor allocates for its scratch buffers (f32, `GPU_BATCH` tokens), exactly:
/// h, q, k, v, attn, attn_out, cos, sin, gate, up, ffn_out, idx (u32, ffn_dim), and the logits
/// when the output matrix is on the GPU.
pub fn scratch_bytes(c: &ModelConfig, output_on_gpu: bool) -> u64 {
    let (q_dim, kv_dim, b) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, GPU_BATCH);
    let floats = b * c.dim // h
        + b * q_dim * 2    // q, attn
        + b * kv_dim * 2   // k, v
        + b * c.dim * 2    // attn_out, ffn_out
        + b * c.head_dim   // cos, sin: (b, head_dim/2) each
        + b * c.ffn_dim * 2 // gate, up
        + c.ffn_dim        // idx
        + if output_on_gpu { b * c.vocab_size } else { 0 };
    4 * floats as u64
}
