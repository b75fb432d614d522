//! Random weight rows of every format, shared by the kernel tests: random bytes with every f16
//! scale field made finite (random bits there could be inf or NaN). Field offsets come from
//! ggml-common.h, written independently of the kernels.

#![allow(dead_code)]

use ember_kernels::quant::DType;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::Rng;

/// Byte offsets of a block's f16 scale fields: `d` first, then `m`/`dmin` where the format has
/// one.
pub fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// `blocks` random blocks of `dtype`, scales uniform in ±0.05 (float formats: values in ±1).
pub fn random_row(dtype: DType, blocks: usize, rng: &mut StdRng) -> Vec<u8> {
    let n = blocks * dtype.block_len();
    match dtype {
        DType::F32 => (0..n).flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes()).collect(),
        DType::F16 => (0..n).flat_map(|_| f16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        DType::BF16 => (0..n).flat_map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        _ => {
            let bb = dtype.block_bytes();
            let mut bytes: Vec<u8> = (0..blocks * bb).map(|_| rng.gen()).collect();
            for block in bytes.chunks_exact_mut(bb) {
                for &off in f16_fields(dtype) {
                    let scale = f16::from_f32(rng.gen_range(-0.05f32..0.05));
                    block[off..off + 2].copy_from_slice(&scale.to_le_bytes());
                }
            }
            bytes
        }
    }
}

/// `n` activations uniform in ±3, each block of 32 scaled by 1 (mostly), 1e-3 or 0.
pub fn random_x(n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    while x.len() < n {
        let scale = [1.0, 1.0, 1.0, 1e-3, 0.0][rng.gen_range(0..5)];
        x.extend((0..32.min(n - x.len())).map(|_| scale * rng.gen_range(-3.0f32..3.0)));
    }
    x
}
