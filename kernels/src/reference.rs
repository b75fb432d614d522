//! Naive f32 reference ops: the oracle every kernel and backend is tested against.
//!
//! Written for obviousness, not speed: f64 accumulation, no blocking, no SIMD. The block-format
//! dequantizers are a deliberately literal transcription of ggml's `ggml-quants.c`
//! (`dequantize_row_q4_0` … `dequantize_row_q6_K`, `get_scale_min_k4`, Q3_K's `kmask1/kmask2`
//! shuffle), element by element with ggml's own index arithmetic, and share no code with the fast
//! kernels in [`crate::quant`]; f16 fields are decoded with the `half` crate.

use crate::quant::{DType, QK_K};
use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// Block formats
// ---------------------------------------------------------------------------------------------

/// Dequantizes `bytes`, a whole number of `dtype` blocks, to f32.
///
/// # Panics
/// When `bytes.len()` is not a multiple of `dtype.block_bytes()` (this is a test oracle: misuse is
/// a bug in the test).
pub fn dequantize_ref(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let bb = dtype.block_bytes();
    assert!(
        bytes.len() % bb == 0,
        "dequantize_ref: {} bytes is not a whole number of {dtype} blocks of {bb} bytes",
        bytes.len()
    );
    let nb = bytes.len() / bb;
    let mut y = vec![0f32; nb * dtype.block_len()];
    for i in 0..nb {
        let x = &bytes[i * bb..(i + 1) * bb];
        let y = &mut y[i * dtype.block_len()..(i + 1) * dtype.block_len()];
        match dtype {
            DType::F32 => y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
            DType::F16 => y[0] = half_at(x, 0),
            DType::BF16 => y[0] = bf16::from_le_bytes([x[0], x[1]]).to_f32(),
            DType::Q4_0 => block_q4_0(x, y),
            DType::Q4_1 => block_q4_1(x, y),
            DType::Q5_0 => block_q5_0(x, y),
            DType::Q5_1 => block_q5_1(x, y),
            DType::Q8_0 => block_q8_0(x, y),
            DType::Q2_K => block_q2_k(x, y),
            DType::Q3_K => block_q3_k(x, y),
            DType::Q4_K => block_q4_k(x, y),
            DType::Q5_K => block_q5_k(x, y),
            DType::Q6_K => block_q6_k(x, y),
        }
    }
    y
}

/// `GGML_FP16_TO_FP32` of the little-endian half at byte `off`.
fn half_at(x: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([x[off], x[off + 1]]).to_f32()
}

const QK4_0: usize = 32;

// block_q4_0 { ggml_half d; uint8_t qs[QK4_0 / 2]; }
fn block_q4_0(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let qs = &x[2..];
    for j in 0..QK4_0 / 2 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + QK4_0 / 2] = x1 as f32 * d;
    }
}

// block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[QK4_1 / 2]; }
fn block_q4_1(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let m = half_at(x, 2);
    let qs = &x[4..];
    for j in 0..QK4_0 / 2 {
        let x0 = (qs[j] & 0x0F) as i32;
        let x1 = (qs[j] >> 4) as i32;
        y[j] = x0 as f32 * d + m;
        y[j + QK4_0 / 2] = x1 as f32 * d + m;
    }
}

// block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; }
fn block_q5_0(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]); // memcpy(&qh, x[i].qh, sizeof(qh))
    let qs = &x[6..];
    for j in 0..QK4_0 / 2 {
        let xh_0 = ((qh >> j) << 4) & 0x10;
        let xh_1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((qs[j] as u32 & 0x0F) | xh_0) as i32 - 16;
        let x1 = ((qs[j] as u32 >> 4) | xh_1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + QK4_0 / 2] = x1 as f32 * d;
    }
}

// block_q5_1 { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; }
fn block_q5_1(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let m = half_at(x, 2);
    let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
    let qs = &x[8..];
    for j in 0..QK4_0 / 2 {
        let xh_0 = ((qh >> j) << 4) & 0x10;
        let xh_1 = (qh >> (j + 12)) & 0x10;
        let x0 = (qs[j] as u32 & 0x0F) | xh_0;
        let x1 = (qs[j] as u32 >> 4) | xh_1;
        y[j] = x0 as f32 * d + m;
        y[j + QK4_0 / 2] = x1 as f32 * d + m;
    }
}

// block_q8_0 { ggml_half d; int8_t qs[QK8_0]; }
fn block_q8_0(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    for j in 0..32 {
        y[j] = (x[2 + j] as i8) as f32 * d;
    }
}

// block_q2_K { uint8_t scales[QK_K/16]; uint8_t qs[QK_K/4]; ggml_half d; ggml_half dmin; }
fn block_q2_k(x: &[u8], y: &mut [f32]) {
    let scales = &x[0..16];
    let d = half_at(x, 80);
    let min = half_at(x, 82);
    let mut q = 16; // x[i].qs
    let mut y_at = 0;
    let mut is = 0;
    for _n in (0..QK_K).step_by(128) {
        let mut shift = 0;
        for _j in 0..4 {
            let sc = scales[is];
            is += 1;
            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
            for l in 0..16 {
                y[y_at] = dl * (((x[q + l] >> shift) & 3) as i8) as f32 - ml;
                y_at += 1;
            }
            let sc = scales[is];
            is += 1;
            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
            for l in 0..16 {
                y[y_at] = dl * (((x[q + l + 16] >> shift) & 3) as i8) as f32 - ml;
                y_at += 1;
            }
            shift += 2;
        }
        q += 32;
    }
}

// block_q3_K { uint8_t hmask[QK_K/8]; uint8_t qs[QK_K/4]; uint8_t scales[12]; ggml_half d; }
fn block_q3_k(x: &[u8], y: &mut [f32]) {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let d_all = half_at(x, 108);
    // memcpy(aux, x[i].scales, 12), then ggml's in-place shuffle to sixteen int8 scales.
    let word = |k: usize| u32::from_le_bytes([x[96 + 4 * k], x[97 + 4 * k], x[98 + 4 * k], x[99 + 4 * k]]);
    let mut aux = [word(0), word(1), word(2), 0u32];
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let scales: Vec<i8> = aux.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect();

    let hm = &x[0..32];
    let mut q = 32; // x[i].qs
    let mut m: u8 = 1;
    let mut y_at = 0;
    let mut is = 0;
    for _n in (0..QK_K).step_by(128) {
        let mut shift = 0;
        for _j in 0..4 {
            let dl = d_all * (scales[is] as i32 - 32) as f32;
            is += 1;
            for l in 0..16 {
                let v = ((x[q + l] >> shift) & 3) as i8 as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                y[y_at] = dl * v as f32;
                y_at += 1;
            }
            let dl = d_all * (scales[is] as i32 - 32) as f32;
            is += 1;
            for l in 0..16 {
                let v = ((x[q + l + 16] >> shift) & 3) as i8 as i32 - if hm[l + 16] & m != 0 { 0 } else { 4 };
                y[y_at] = dl * v as f32;
                y_at += 1;
            }
            shift += 2;
            m = m.wrapping_shl(1);
        }
        q += 32;
    }
}

/// ggml's `get_scale_min_k4(j, q, &d, &m)` over the 12 packed scale bytes `q`.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[QK_K/2]; }
fn block_q4_k(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let min = half_at(x, 2);
    let scales = &x[4..16];
    let mut q = 16;
    let mut y_at = 0;
    let mut is = 0;
    for _j in (0..QK_K).step_by(64) {
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        for l in 0..32 {
            y[y_at] = d1 * (x[q + l] & 0xF) as f32 - m1;
            y_at += 1;
        }
        for l in 0..32 {
            y[y_at] = d2 * (x[q + l] >> 4) as f32 - m2;
            y_at += 1;
        }
        q += 32;
        is += 2;
    }
}

// block_q5_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[QK_K/8];
//              uint8_t qs[QK_K/2]; }
fn block_q5_k(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 0);
    let min = half_at(x, 2);
    let scales = &x[4..16];
    let qh = &x[16..48];
    let mut ql = 48;
    let mut y_at = 0;
    let mut is = 0;
    let (mut u1, mut u2): (u8, u8) = (1, 2);
    for _j in (0..QK_K).step_by(64) {
        let (sc, m) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        for l in 0..32 {
            let hi = if qh[l] & u1 != 0 { 16 } else { 0 };
            y[y_at] = d1 * ((x[ql + l] & 0xF) as i32 + hi) as f32 - m1;
            y_at += 1;
        }
        for l in 0..32 {
            let hi = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[y_at] = d2 * ((x[ql + l] >> 4) as i32 + hi) as f32 - m2;
            y_at += 1;
        }
        ql += 32;
        is += 2;
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

// block_q6_K { uint8_t ql[QK_K/2]; uint8_t qh[QK_K/4]; int8_t scales[QK_K/16]; ggml_half d; }
fn block_q6_k(x: &[u8], y: &mut [f32]) {
    let d = half_at(x, 208);
    let (mut ql, mut qh, mut sc, mut y0) = (0, 128, 192, 0);
    for _n in (0..QK_K).step_by(128) {
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((x[ql + l] & 0xF) | ((x[qh + l] & 3) << 4)) as i8 - 32;
            let q2 = ((x[ql + l + 32] & 0xF) | (((x[qh + l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((x[ql + l] >> 4) | (((x[qh + l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((x[ql + l + 32] >> 4) | (((x[qh + l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| (x[sc + is + k] as i8) as f32;
            y[y0 + l] = d * s(0) * q1 as f32;
            y[y0 + l + 32] = d * s(2) * q2 as f32;
            y[y0 + l + 64] = d * s(4) * q3 as f32;
            y[y0 + l + 96] = d * s(6) * q4 as f32;
        }
        y0 += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

// ---------------------------------------------------------------------------------------------
// Dense ops
// ---------------------------------------------------------------------------------------------

/// Σ a_i · b_i, accumulated in f64.
pub fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_ref: lengths differ");
    a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32
}

/// y = W x for a row-major `w` of shape (rows, cols); f64 accumulation.
pub fn matvec_ref(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "matvec_ref: w is not {rows}x{cols}");
    assert_eq!(x.len(), cols, "matvec_ref: x is not {cols} long");
    (0..rows).map(|r| dot_ref(&w[r * cols..(r + 1) * cols], x)).collect()
}

/// RMSNorm (Zhang & Sennrich 2019, as in llama.cpp's `ggml_rms_norm` then `mul`):
/// y_i = x_i / sqrt(mean(x²) + eps) · weight_i.
pub fn rms_norm_ref(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    assert_eq!(x.len(), weight.len(), "rms_norm_ref: lengths differ");
    let mean_sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len().max(1) as f64;
    let scale = 1.0 / (mean_sq + eps as f64).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| (v as f64 * scale * w as f64) as f32)
        .collect()
}

/// softmax(x)_i = exp(x_i - max x) / Σ_j exp(x_j - max x), in f64.
pub fn softmax_ref(x: &[f32]) -> Vec<f32> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let exps: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// SiLU (swish): x · σ(x) = x / (1 + e^-x).
pub fn silu_ref(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}
