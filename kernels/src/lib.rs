//! Ember's compute kernels.
//!
//! - [`quant`]: the GGUF block formats (ggml's `ggml-quants.c` layouts): dequantize a row and dot a
//!   quantized row with an f32 activation vector.
//! - [`cpu`]: matrix-vector and matrix-matrix products over quantized weights, parallel with rayon,
//!   SIMD chosen at run time; RMSNorm, RoPE, softmax, SwiGLU.
//! - [`backend`]: the device interface ([`backend::Backend`]) and its CPU, wgpu and CUDA
//!   implementations (the latter two behind cargo features).
//! - [`reference`]: naive f32 versions of every op, the oracle the tests compare each kernel with.

pub mod backend;
pub mod cpu;
pub mod error;
pub mod quant;
pub mod reference;

pub use error::{KernelError, Result};
pub use quant::DType;

/// A read-only view of a 2-D weight matrix stored row-major in one of the block formats.
///
/// `rows` is the output dimension, `cols` the input (reduction) dimension; every row is
/// `dtype.row_bytes(cols)` bytes long and rows follow each other without padding.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8], // (rows, row_bytes(cols))
}

impl<'a> MatRef<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements in `dtype`.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let row_bytes = dtype.row_bytes(cols)?;
        let expected = row_bytes.checked_mul(rows).ok_or(KernelError::Overflow { what: "matrix bytes" })?;
        if data.len() != expected {
            return Err(KernelError::Shape {
                op: "MatRef::new",
                expected: format!("{rows}x{cols} {} = {expected} bytes", dtype.name()),
                got: format!("{} bytes", data.len()),
            });
        }
        Ok(Self { dtype, rows, cols, data })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}
