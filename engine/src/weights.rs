//! Named, memory-mapped weight tensors, whatever file they came from.
//!
//! A [`WeightStore`] maps canonical tensor names (GGUF naming: `token_embd.weight`,
//! `blk.{i}.attn_q.weight`, …) to [`Weight`]s. A Hugging Face folder's names are translated on
//! load, so the model code knows one naming only. `Weight` hides the format: the forward pass
//! never asks whether a matrix is F32 or Q4_K.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use ember_kernels::{DType, MatRef};
use memmap2::Mmap;

use crate::error::{EngineError, Result};

/// One tensor: its format, its shape in PyTorch order (`[rows, cols]` for a matrix), and its bytes
/// inside a shared memory map.
#[derive(Clone)]
pub struct Weight {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weight({} {} {:?})", self.name, self.dtype, self.shape)
    }
}

impl Weight {
    /// `range` must lie inside `map` and hold exactly the tensor's bytes (loaders check this).
    pub fn new(name: String, dtype: DType, shape: Vec<usize>, map: Arc<Mmap>, range: Range<usize>) -> Weight {
        Weight { name, dtype, shape, map, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    pub fn n_bytes(&self) -> usize {
        self.range.len()
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The weight as a `(rows, cols)` matrix view; 1-D weights are one row.
    pub fn mat(&self) -> MatRef<'_> {
        let cols = *self.shape.last().unwrap_or(&0);
        let rows = self.n_elements() / cols.max(1);
        MatRef { dtype: self.dtype, rows, cols, data: self.bytes() }
    }

    /// The weight dequantized to f32 (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let m = self.mat();
        let mut out = vec![0.0f32; m.rows * m.cols];
        for (r, chunk) in out.chunks_mut(m.cols.max(1)).enumerate() {
            ember_kernels::quant::dequantize_row(self.dtype, m.row(r), chunk)?;
        }
        Ok(out)
    }
}

/// All tensors of a model, by canonical name.
pub struct WeightStore {
    pub path: PathBuf,
    pub tensors: HashMap<String, Weight>,
}

impl WeightStore {
    pub fn get(&self, name: &str) -> Result<&Weight> {
        self.tensors.get(name).ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// A tensor that must have `shape` (PyTorch order).
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Weight> {
        let w = self.get(name)?;
        if w.shape != shape {
            return Err(EngineError::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: w.shape.clone(),
            });
        }
        Ok(w)
    }

    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|w| w.n_bytes()).sum()
    }
}
