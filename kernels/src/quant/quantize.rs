//! Quantizing f32 rows into GGUF block formats, as ggml's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`): for writing models (synthetic models,
//! tests). Not on any inference path.

use half::f16;

use super::DType;
use crate::{KernelError, Result};

/// `x` (a whole number of blocks) in `dtype`'s layout; F32, F16, Q8_0 and Q4_0.
pub fn quantize_row(dtype: DType, x: &[f32]) -> Result<Vec<u8>> {
    let block = dtype.block_len();
    if x.len() % block != 0 {
        return Err(KernelError::PartialBlock { dtype: dtype.name(), cols: x.len(), block });
    }
    let mut out = Vec::with_capacity(dtype.row_bytes(x.len())?);
    match dtype {
        DType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        DType::Q4_0 => {
            for b in x.chunks_exact(32) {
                // The signed value of largest magnitude maps to -8.
                let max = b.iter().fold(0.0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|i| q(b[i]) | (q(b[i + 16]) << 4)));
            }
        }
        other => return Err(KernelError::Unsupported { op: "quantize_row", dtype: other.name() }),
    }
    Ok(out)
}
