//! The CPU matrix products (`matmul`, `matmul_group`) against the naive reference, for every
//! format, one and many tokens, row counts that cross the kernels' groups of rows and the
//! many-token tiles, and groups of products sharing one input.
//!
//! Tolerance: the quantized formats read the input quantized to 8 bits per block of 32
//! (`d_a = max|x|/127`, error ≤ `d_a/2` per element), so `|got − want| ≤ Σ_j |w_j|·d_a(j)/2`
//! plus float-order slack `FLOAT_ORDER_TOL·Σ_j |w_j x_j|`; the float formats get the slack only.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::cpu::{matmul, matmul_group, needs_q8, Input, Product};
use ember_kernels::quant::q8::{quantize_q8_rows, Q8Acts};
use ember_kernels::quant::DType;
use ember_kernels::reference::dequantize_ref;
use ember_kernels::MatRef;
use rand::rngs::StdRng;
use rand::SeedableRng;

const FLOAT_ORDER_TOL: f64 = 1e-5;

struct Case {
    dtype: DType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    w: Vec<f32>, // (rows, cols), dequantized by the reference
}

fn case(dtype: DType, rows: usize, blocks: usize, seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..rows).flat_map(|_| rows::random_row(dtype, blocks, &mut rng)).collect();
    let w = dequantize_ref(dtype, &data);
    Case { dtype, rows, cols: blocks * dtype.block_len(), data, w }
}

/// Checks `out` (n, rows) against the reference products with `x` (n, cols).
fn check(c: &Case, x: &[f32], out: &[f32], what: &str) {
    let n = x.len() / c.cols;
    let quantized = needs_q8(&MatRef::new(c.dtype, c.rows, c.cols, &c.data).unwrap());
    for t in 0..n {
        let xt = &x[t * c.cols..(t + 1) * c.cols];
        let d_a: Vec<f64> = xt.chunks(32).map(|b| b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)) / 127.0).collect();
        for r in 0..c.rows {
            let wr = &c.w[r * c.cols..(r + 1) * c.cols];
            let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mut tol = FLOAT_ORDER_TOL * wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
            if quantized {
                tol += wr.iter().enumerate().map(|(j, &a)| a.abs() as f64 * d_a[j / 32] * (0.5 + 1e-4)).sum::<f64>();
            }
            let got = out[t * c.rows + r] as f64;
            assert!(
                (got - want).abs() <= tol + 1e-6,
                "{what} {}: {}x{}, token {t} row {r}: got {got}, reference {want}, tolerance {tol:e}",
                c.dtype, c.rows, c.cols
            );
        }
    }
}

/// Row counts: below, at and past a group of four rows, and past a many-token tile (16 KiB of
/// rows: ~100 rows of 256 Q4_1 columns).
const ROWS: [usize; 5] = [1, 4, 7, 37, 211];
const TOKENS: [usize; 4] = [1, 2, 5, 9];

#[test]
fn matmul_matches_reference_for_every_format() {
    for (k, dtype) in DType::ALL.into_iter().enumerate() {
        let blocks = if dtype.block_len() == 256 { 2 } else { 8 }; // 256 or 512 columns
        for (i, &rows) in ROWS.iter().enumerate() {
            let c = case(dtype, rows, blocks, (k * 100 + i) as u64);
            let m = MatRef::new(dtype, rows, c.cols, &c.data).unwrap();
            for &n in &TOKENS {
                let x = rows::random_x(n * c.cols, &mut StdRng::seed_from_u64(n as u64));
                let mut out = vec![f32::NAN; n * rows];
                matmul(m, &x, n, &mut out).unwrap();
                check(&c, &x, &out, "matmul");
            }
        }
    }
}

#[test]
fn a_group_computes_each_product_as_alone() {
    // Q, K, V-like shapes in three formats sharing one input, as in a decode step and a prefill.
    let cs = [case(DType::Q4_1, 64, 4, 1), case(DType::Q8_0, 16, 4, 2), case(DType::F16, 24, 128, 3)];
    for n in [1, 3] {
        let x = rows::random_x(n * 128, &mut StdRng::seed_from_u64(9));
        let mut q8 = Q8Acts::default();
        quantize_q8_rows(&x, &mut q8);
        let mut outs: Vec<Vec<f32>> = cs.iter().map(|c| vec![f32::NAN; n * c.rows]).collect();
        let mut products: Vec<Product<'_>> = cs
            .iter()
            .zip(outs.iter_mut())
            .map(|(c, out)| Product { w: MatRef::new(c.dtype, c.rows, c.cols, &c.data).unwrap(), out })
            .collect();
        matmul_group(&mut products, Input { x: &x, q8: Some(&q8), n_tokens: n }).unwrap();
        for (c, out) in cs.iter().zip(&outs) {
            check(c, &x, out, "matmul_group");
        }
    }
}

#[test]
fn shape_mismatches_are_errors() {
    let c = case(DType::Q4_0, 4, 2, 0);
    let m = MatRef::new(DType::Q4_0, 4, 64, &c.data).unwrap();
    let mut out = vec![0.0; 4];
    assert!(matmul(m, &[0.0; 63], 1, &mut out).is_err());
    assert!(matmul(m, &[0.0; 64], 1, &mut out[..3]).is_err());
}
