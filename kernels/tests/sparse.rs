//! The sparse FFN products against the naive reference (the dequantized weights in f64):
//! `matvec_rows` for every format and subsets of rows (empty, scattered, all), `axpy_rows` over
//! the transposed 8-bit copy for every format, many subset sizes (across the four-row groups and
//! the task split) and output sizes that are not a multiple of 32.
//!
//! Tolerances: `matvec_rows` as the dense products (`tests/matmul.rs`): the 8-bit input's
//! rounding, `Σ_j |w_j|·d_a(j)/2`, plus float-order slack. `axpy_rows` reads weights divided by
//! their output's largest |w| and requantized to 8 bits per block of 32 outputs (step `d_w =
//! s_o·max_block|w/s|/127`, error ≤ `d_w/2` per weight), so `|got − want| ≤ Σ_k |c_k|·d_w/2`
//! plus the float-order slack.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::cpu::sparse::{axpy_rows, axpy_rows_with, matvec_rows, AxpyKernel, AxpyScratch, ColumnMajor, RowsProduct};
use ember_kernels::cpu::{needs_q8, Input};
use ember_kernels::quant::q8::{quantize_q8, Q8Acts};
use ember_kernels::quant::DType;
use ember_kernels::reference::dequantize_ref;
use ember_kernels::MatRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FLOAT_ORDER_TOL: f64 = 1e-5;

fn random_mat(dtype: DType, rows: usize, blocks: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..rows).flat_map(|_| rows::random_row(dtype, blocks, &mut rng)).collect();
    let w = dequantize_ref(dtype, &data);
    (data, w)
}

/// A sorted random subset of `0..n` holding about `fraction` of it.
fn subset(n: usize, fraction: f64, rng: &mut StdRng) -> Vec<u32> {
    (0..n as u32).filter(|_| rng.gen_bool(fraction)).collect()
}

#[test]
fn matvec_rows_matches_reference_for_every_format() {
    for (k, dtype) in DType::ALL.into_iter().enumerate() {
        let blocks = if dtype.block_len() == 256 { 2 } else { 8 };
        let (rows, cols) = (97, blocks * dtype.block_len());
        let (gate, wg) = random_mat(dtype, rows, blocks, k as u64);
        let (up, wu) = random_mat(dtype, rows, blocks, 1000 + k as u64);
        let mut rng = StdRng::seed_from_u64(7 + k as u64);
        let x = rows::random_x(cols, &mut rng);
        let mut q8 = Q8Acts::default();
        quantize_q8(&x, &mut q8);
        for fraction in [0.0, 0.1, 0.5, 1.0] {
            let idx = subset(rows, fraction, &mut rng);
            let (mut og, mut ou) = (vec![f32::NAN; idx.len()], vec![f32::NAN; idx.len()]);
            let mg = MatRef::new(dtype, rows, cols, &gate).unwrap();
            let mu = MatRef::new(dtype, rows, cols, &up).unwrap();
            let mut group = [RowsProduct { w: mg, out: &mut og }, RowsProduct { w: mu, out: &mut ou }];
            matvec_rows(&mut group, &idx, Input { x: &x, q8: Some(&q8), n_tokens: 1 }).unwrap();
            for (w, out) in [(&wg, &og), (&wu, &ou)] {
                assert_rows_close(dtype, needs_q8(&mg), w, cols, &x, &idx, out);
            }
        }
    }
}

/// `out[k]` against the f64 dot of row `idx[k]` of `w` (`cols` wide) with `x`, within the
/// 8-bit input's rounding (when `q8`) and float-order slack.
fn assert_rows_close(dtype: DType, q8: bool, w: &[f32], cols: usize, x: &[f32], idx: &[u32], out: &[f32]) {
    let d_a: Vec<f64> = x.chunks(32).map(|b| b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)) / 127.0).collect();
    for (o, &r) in out.iter().zip(idx) {
        let wr = &w[r as usize * cols..][..cols];
        let want: f64 = wr.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let mut tol = FLOAT_ORDER_TOL * wr.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
        if q8 {
            tol += wr.iter().enumerate().map(|(j, &a)| a.abs() as f64 * d_a[j / 32] * (0.5 + 1e-4)).sum::<f64>();
        }
        assert!((*o as f64 - want).abs() <= tol + 1e-6, "{dtype} row {r}: got {o}, reference {want}, tol {tol:e}");
    }
}

#[test]
fn axpy_rows_matches_reference_for_every_format() {
    for (k, dtype) in DType::ALL.into_iter().enumerate() {
        // W is (outputs, inputs) like `down`: outputs not a multiple of 32, inputs many blocks.
        let blocks = if dtype.block_len() == 256 { 2 } else { 12 };
        let (outputs, inputs) = (45, blocks * dtype.block_len());
        let (data, w) = random_mat(dtype, outputs, blocks, 50 + k as u64);
        let m = ColumnMajor::from_mat(MatRef::new(dtype, outputs, inputs, &data).unwrap()).unwrap();
        let mut rng = StdRng::seed_from_u64(k as u64);
        let mut scratch = AxpyScratch::default();
        let cases = [0.0, 0.01, 0.3, 1.0].into_iter().flat_map(|f| AxpyKernel::detected().into_iter().map(move |k| (f, k)));
        for (fraction, kernel) in cases {
            let idx = subset(inputs, fraction, &mut rng);
            let coef = rows::random_x(idx.len(), &mut rng);
            let mut out = vec![f32::NAN; outputs];
            axpy_rows_with(kernel, &m, &idx, &coef, &mut out, &mut scratch).unwrap();
            assert_axpy_close(&format!("{dtype} {kernel:?}"), &w, outputs, inputs, &idx, &coef, &out);
        }
    }
}

/// `out` against the f64 `Σ_k coef[k] · W[:, idx[k]]` of `w` (`outputs × inputs`), within the
/// 8-bit copy's rounding (per 32-output block, outputs normalized to their row maximum) and
/// float-order slack.
fn assert_axpy_close(what: &str, w: &[f32], outputs: usize, inputs: usize, idx: &[u32], coef: &[f32], out: &[f32]) {
    let row_max: Vec<f64> = w.chunks_exact(inputs).map(|r| r.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64))).collect();
    for (o, got) in out.iter().enumerate() {
        let terms = idx.iter().zip(coef).map(|(&j, &c)| (c as f64, w[o * inputs + j as usize] as f64));
        let want: f64 = terms.clone().map(|(c, v)| c * v).sum();
        let block = (o / 32) * 32..((o / 32 + 1) * 32).min(outputs);
        let tol: f64 = idx
            .iter()
            .zip(coef)
            .map(|(&j, &c)| {
                let normalized = block.clone().map(|r| w[r * inputs + j as usize].abs() as f64 / row_max[r].max(1e-30));
                let d_w = row_max[o] * normalized.fold(0.0, f64::max) / 127.0;
                (c as f64).abs() * d_w * (0.5 + 1e-4)
            })
            .sum::<f64>()
            + FLOAT_ORDER_TOL * terms.map(|(c, v)| (c * v).abs()).sum::<f64>();
        let got = *got as f64;
        assert!((got - want).abs() <= tol + 1e-6, "{what} output {o}, {} rows: got {got}, reference {want}, tol {tol:e}", idx.len());
    }
}

/// Subsets large enough to be split into several parallel tasks (each task reads at least
/// 1 MiB of rows): the partial sums of the tasks must add up to the reference too.
#[test]
fn large_subsets_split_into_tasks_match_the_reference() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    pool.install(|| {
        let (rows, blocks) = (4096, 32); // Q4_0 rows of 1024 (576 bytes): 2.25 MiB in all
        let (data, w) = random_mat(DType::Q4_0, rows, blocks, 77);
        let cols = blocks * 32;
        let mat = MatRef::new(DType::Q4_0, rows, cols, &data).unwrap();
        let mut rng = StdRng::seed_from_u64(78);
        let x = rows::random_x(cols, &mut rng);
        let mut q8 = Q8Acts::default();
        quantize_q8(&x, &mut q8);
        let idx = subset(rows, 0.9, &mut rng);
        let mut out = vec![f32::NAN; idx.len()];
        matvec_rows(&mut [RowsProduct { w: mat, out: &mut out }], &idx, Input { x: &x, q8: Some(&q8), n_tokens: 1 }).unwrap();
        assert_rows_close(DType::Q4_0, true, &w, cols, &x, &idx, &out);
        // As `down`: 1024 outputs × 4096 inputs, 1152 bytes of the copy per input: 90% of the
        // inputs read 4 MiB (four tasks); the rows above, 2 MiB (two).
        let (outputs, inputs) = (1024, 4096);
        let (data, w) = random_mat(DType::Q8_0, outputs, inputs / 32, 79);
        let m = ColumnMajor::from_mat(MatRef::new(DType::Q8_0, outputs, inputs, &data).unwrap()).unwrap();
        let idx = subset(inputs, 0.9, &mut rng);
        let coef = rows::random_x(idx.len(), &mut rng);
        let mut scratch = AxpyScratch::default();
        for kernel in AxpyKernel::detected() {
            let mut out = vec![f32::NAN; outputs];
            axpy_rows_with(kernel, &m, &idx, &coef, &mut out, &mut scratch).unwrap();
            assert_axpy_close(&format!("Q8_0 {kernel:?}"), &w, outputs, inputs, &idx, &coef, &out);
        }
    });
}

#[test]
fn column_major_rows_are_the_columns() {
    let (data, w) = random_mat(DType::Q4_1, 40, 4, 3);
    let m = ColumnMajor::from_mat(MatRef::new(DType::Q4_1, 40, 128, &data).unwrap()).unwrap();
    let mut row = vec![0.0; 40];
    for j in [0, 17, 127] {
        m.row_f32(j, &mut row);
        for (o, v) in row.iter().enumerate() {
            let want = w[o * 128 + j];
            let row_max = |r: usize| w[r * 128..(r + 1) * 128].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let block = (0..32).map(|r| ((o / 32) * 32 + r).min(39));
            let d_w = row_max(o) * block.map(|r| w[r * 128 + j].abs() / row_max(r)).fold(0.0, f32::max) / 127.0;
            assert!((v - want).abs() <= d_w * 0.5001 + 1e-7, "column {j} output {o}: {v} vs {want}");
        }
    }
}

/// An ordered copy holds the same rows as the plain one, moved to their positions; an order
/// that is not a permutation is an error.
#[test]
fn ordered_column_major_permutes_the_rows() {
    let (data, _) = random_mat(DType::Q4_1, 40, 4, 5);
    let w = MatRef::new(DType::Q4_1, 40, 128, &data).unwrap();
    let plain = ColumnMajor::from_mat(w).unwrap();
    let order: Vec<u32> = (0..128u32).map(|k| (k * 37 + 11) % 128).collect();
    let ordered = ColumnMajor::from_mat_ordered(w, &order).unwrap();
    let (mut a, mut b) = (vec![0.0; 40], vec![0.0; 40]);
    for (k, &j) in order.iter().enumerate() {
        plain.row_f32(j as usize, &mut a);
        ordered.row_f32(k, &mut b);
        assert_eq!(a, b, "position {k} should hold column {j}");
    }
    let mut repeated = order.clone();
    repeated[5] = repeated[6];
    assert!(ColumnMajor::from_mat_ordered(w, &repeated).is_err());
    assert!(ColumnMajor::from_mat_ordered(w, &order[..127]).is_err());
}

#[test]
fn shape_mismatches_are_errors() {
    let (data, _) = random_mat(DType::Q8_0, 8, 2, 0);
    let w = MatRef::new(DType::Q8_0, 8, 64, &data).unwrap();
    let m = ColumnMajor::from_mat(w).unwrap();
    let mut scratch = AxpyScratch::default();
    let mut out = vec![0.0; 8];
    assert!(axpy_rows(&m, &[64], &[1.0], &mut out, &mut scratch).is_err(), "index past the inputs");
    assert!(axpy_rows(&m, &[1, 2], &[1.0], &mut out, &mut scratch).is_err(), "fewer coefficients");
    assert!(axpy_rows(&m, &[1], &[1.0], &mut out[..7], &mut scratch).is_err(), "short output");
    let x = vec![0.5; 64];
    let mut o = vec![0.0; 2];
    let input = Input { x: &x, q8: None, n_tokens: 1 };
    assert!(matvec_rows(&mut [RowsProduct { w, out: &mut o }], &[1, 8], input).is_err(), "row past the matrix");
    assert!(matvec_rows(&mut [RowsProduct { w, out: &mut o[..1] }], &[1, 2], input).is_err(), "short output");
}

/// The subset-of-rows kernel agrees with the one-row kernel on any index list (unsorted,
/// repeated, shorter than a group, longer than the prefetch distance), and gives 0 for a row the
/// matrix does not hold.
#[test]
fn gather_kernel_matches_the_row_kernel() {
    use ember_kernels::quant::RowKernels;
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0] {
        for (name, gather) in RowKernels::legacy_q8_gather_variants(dtype) {
            let dot = RowKernels::dot_q8(dtype).unwrap();
            // 19 blocks: the 512-bit kernel's eight-block steps, then its two- and one-block ones.
            let (rows, blocks) = (53, 19);
            let (data, _) = random_mat(dtype, rows, blocks, 9);
            let rb = data.len() / rows;
            let mut rng = StdRng::seed_from_u64(4);
            let x = rows::random_x(blocks * 32, &mut rng);
            let mut q8 = Q8Acts::default();
            quantize_q8(&x, &mut q8);
            for n in [0usize, 1, 3, 4, 5, 17, 40] {
                let mut idx: Vec<u32> = (0..n).map(|_| rng.gen_range(0..rows as u32)).collect();
                if n > 2 {
                    idx[1] = idx[0]; // a repeat
                }
                let mut out = vec![f32::NAN; n];
                gather(&data, rb, &idx, q8.as_ref(), &mut out);
                for (o, &r) in out.iter().zip(&idx) {
                    let want = dot(&data[r as usize * rb..][..rb], q8.as_ref());
                    assert!((o - want).abs() <= 1e-5 * want.abs().max(1.0), "{dtype} {name} row {r}: {o} vs {want}");
                }
            }
            let mut out = vec![f32::NAN; 5];
            gather(&data, rb, &[0, 1, rows as u32, 2, 3], q8.as_ref(), &mut out);
            assert_eq!(out[2], 0.0, "{dtype} {name}: a row past the matrix");
        }
    }
}
