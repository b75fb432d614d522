//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, in f32. Memory grows with the positions actually used, up to the context.

use crate::error::{EngineError, Result};

pub struct KvCache {
    layers: Vec<LayerKv>,
    /// The forward pass's buffers, kept with the sequence so decoding allocates nothing.
    pub(crate) scratch: crate::model::Scratch,
    /// Keys and values of the layers whose attention runs on the GPU (made on first use).
    pub(crate) gpu: Option<crate::model::GpuKv>,
    kv_dim: usize, // n_kv_heads * head_dim
    len: usize,
    ctx: usize,
}

struct LayerKv {
    k: Vec<f32>, // (len, kv_dim)
    v: Vec<f32>, // (len, kv_dim)
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, ctx: usize) -> KvCache {
        let layers = (0..n_layers).map(|_| LayerKv { k: Vec::new(), v: Vec::new() }).collect();
        KvCache { layers, scratch: Default::default(), gpu: None, kv_dim, len: 0, ctx }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache may hold.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Forgets every position from `len` on (used to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for l in &mut self.layers {
            l.k.truncate(self.len * self.kv_dim);
            l.v.truncate(self.len * self.kv_dim);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Fails when `n` more positions would not fit in the context.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.ctx {
            return Err(EngineError::ContextOverflow { prompt: self.len + n, ctx: self.ctx });
        }
        Ok(())
    }

    /// Stores the keys and values of `n` new positions for `layer` (after the current `len`).
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let l = &mut self.layers[layer];
        l.k.truncate(self.len * self.kv_dim);
        l.v.truncate(self.len * self.kv_dim);
        l.k.extend_from_slice(k);
        l.v.extend_from_slice(v);
    }

    /// Keys and values of `layer` for every position, the ones just appended included.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        let l = &self.layers[layer];
        (&l.k, &l.v)
    }

    /// Marks `n` appended positions as held (call once all layers have appended).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// FFN neurons kept and evaluated since the cache was made or the stats last taken (the
    /// sparsity achieved).
    pub fn sparsity_stats(&self) -> crate::sparsity::SparsityStats {
        self.scratch.stats
    }

    /// Returns the stats and starts counting afresh.
    pub fn take_sparsity_stats(&mut self) -> crate::sparsity::SparsityStats {
        std::mem::take(&mut self.scratch.stats)
    }

    /// Bytes held by the cache now.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.capacity() + l.v.capacity()) * 4).sum()
    }
}
