//! `columns_axpy` over the lossless column layout against the naive reference: the model's
//! weights dequantized by `dequantize_ref` and summed in f64, for every legacy format, every body
//! this CPU runs, output counts around the 32-output groups, index lists empty, sparse, dense,
//! unsorted and large enough to split into parallel tasks.
//!
//! The layout keeps the model's quants and scales. The AVX2 body for 4 and 5 bits quantizes each
//! block's coefficients to 8 bits as the dense product quantizes its input (step `s_b =
//! max_b|c|/127`, error ≤ `s_b/2` per coefficient), so `|got − want| ≤ Σ_k |W[o, j_k]|·s_b/2`;
//! on top, f32 summation: `FLOAT_ORDER_TOL · Σ_k |c_k|·(|W[o, j_k]| + 1)·16` bounds the rounding
//! of `d·(Σ c q + offset·Σ c)`, whose terms are up to 16 times the weights'.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::cpu::columns::{columns_axpy, columns_axpy_with, ColumnsKernel, ColumnsScratch, QuantColumns};
use ember_kernels::quant::DType;
use ember_kernels::reference::dequantize_ref;
use ember_kernels::MatRef;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const FLOAT_ORDER_TOL: f64 = 2e-5;

const FORMATS: [DType; 5] = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0];

fn random_mat(dtype: DType, rows: usize, blocks: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..rows).flat_map(|_| rows::random_row(dtype, blocks, &mut rng)).collect();
    let w = dequantize_ref(dtype, &data);
    (data, w)
}

/// `out` against the f64 `Σ_k coef[k] · W[:, idx[k]]` of `w` (`outputs × inputs`).
fn assert_close(what: &str, w: &[f32], inputs: usize, idx: &[u32], coef: &[f32], out: &[f32]) {
    let mut step = vec![0f64; inputs / 32]; // s_b of each block
    for (&j, &c) in idx.iter().zip(coef) {
        let b = j as usize / 32;
        step[b] = step[b].max((c as f64).abs() / 127.0);
    }
    for (o, got) in out.iter().enumerate() {
        let rounding: f64 = idx.iter().map(|&j| (w[o * inputs + j as usize] as f64).abs() * step[j as usize / 32] * (0.5 + 1e-4)).sum();
        let terms = idx.iter().zip(coef).map(|(&j, &c)| c as f64 * w[o * inputs + j as usize] as f64);
        let want: f64 = terms.clone().sum();
        // The offset and minimum terms cancel in W, not in the sums the kernel forms: bound by
        // each weight's quant times its scale (|w| + 16 |d| is above both).
        let scale: f64 = idx.iter().zip(coef).map(|(&j, &c)| (c as f64).abs() * (w[o * inputs + j as usize].abs() as f64 + 1.0)).sum();
        let tol = rounding + FLOAT_ORDER_TOL * (terms.map(f64::abs).sum::<f64>() + 16.0 * scale) + 1e-6;
        let got = *got as f64;
        assert!((got - want).abs() <= tol, "{what} output {o}, {} columns: got {got}, reference {want}, tol {tol:e}", idx.len());
    }
}

/// `columns_axpy_with` on every body this CPU runs, each against the reference.
fn check_every_kernel(what: &str, m: &QuantColumns, w: &[f32], idx: &[u32], coef: &[f32], scratch: &mut ColumnsScratch) {
    for kernel in ColumnsKernel::detected() {
        let mut out = vec![f32::NAN; m.n_outputs];
        columns_axpy_with(kernel, m, idx, coef, &mut out, scratch).unwrap();
        assert_close(&format!("{what} {kernel:?}"), w, m.n_inputs, idx, coef, &out);
    }
}

#[test]
fn column_layout_holds_the_models_weights_exactly() {
    for (k, dtype) in FORMATS.into_iter().enumerate() {
        let (outputs, blocks) = (45, 3);
        let inputs = blocks * 32;
        let (data, w) = random_mat(dtype, outputs, blocks, 10 + k as u64);
        let m = QuantColumns::from_mat(MatRef::new(dtype, outputs, inputs, &data).unwrap()).unwrap();
        let mut col = vec![0f32; outputs];
        for j in 0..inputs {
            m.column_f32(j, &mut col);
            for (o, &v) in col.iter().enumerate() {
                assert_eq!(v, w[o * inputs + j], "{dtype}: W[{o}, {j}]");
            }
        }
        let per_input = QuantColumns::bytes_per_input_of(dtype, outputs).unwrap();
        assert!(m.bytes() <= per_input * inputs, "{dtype}: {} bytes held, {} counted", m.bytes(), per_input * inputs);
    }
}

#[test]
fn columns_axpy_matches_reference_for_every_legacy_format() {
    for (k, dtype) in FORMATS.into_iter().enumerate() {
        for outputs in [1, 31, 32, 45, 96, 130] {
            let blocks = 5;
            let inputs = blocks * 32;
            let (data, w) = random_mat(dtype, outputs, blocks, 100 * k as u64 + outputs as u64);
            let m = QuantColumns::from_mat(MatRef::new(dtype, outputs, inputs, &data).unwrap()).unwrap();
            let mut rng = StdRng::seed_from_u64(outputs as u64);
            let mut scratch = ColumnsScratch::default();
            for fraction in [0.0, 0.02, 0.3, 0.7, 1.0] {
                let idx: Vec<u32> = (0..inputs as u32).filter(|_| rng.gen_bool(fraction)).collect();
                let coef = rows::random_x(idx.len(), &mut rng);
                check_every_kernel(&format!("{dtype} {outputs} outputs"), &m, &w, &idx, &coef, &mut scratch);
            }
        }
    }
}

#[test]
fn unsorted_and_repeated_indices_are_summed_as_given() {
    let (outputs, blocks) = (64, 4);
    let inputs = blocks * 32;
    let (data, w) = random_mat(DType::Q4_1, outputs, blocks, 3);
    let m = QuantColumns::from_mat(MatRef::new(DType::Q4_1, outputs, inputs, &data).unwrap()).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let mut idx: Vec<u32> = (0..inputs as u32).filter(|_| rng.gen_bool(0.5)).collect();
    idx.extend([5, 5, 100]);
    idx.shuffle(&mut rng);
    let coef = rows::random_x(idx.len(), &mut rng);
    check_every_kernel("unsorted", &m, &w, &idx, &coef, &mut ColumnsScratch::default());
}

/// Enough columns that the product is split into tasks over output groups (a task reads at
/// least 1 MiB): every group must still get every block.
#[test]
fn products_split_into_tasks_match_the_reference() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    pool.install(|| {
        let (outputs, blocks) = (8192, 24); // Q5_0, 768 inputs: 3.75 MiB of columns, 3.4 read
        let inputs = blocks * 32;
        let (data, w) = random_mat(DType::Q5_0, outputs, blocks, 9);
        let m = QuantColumns::from_mat(MatRef::new(DType::Q5_0, outputs, inputs, &data).unwrap()).unwrap();
        let mut rng = StdRng::seed_from_u64(10);
        let idx: Vec<u32> = (0..inputs as u32).filter(|_| rng.gen_bool(0.9)).collect();
        let coef = rows::random_x(idx.len(), &mut rng);
        let mut out = vec![f32::NAN; outputs];
        columns_axpy(&m, &idx, &coef, &mut out, &mut ColumnsScratch::default()).unwrap();
        assert_close("split Q5_0", &w, inputs, &idx, &coef, &out);
    });
}

#[test]
fn bad_shapes_and_formats_are_errors() {
    let (data, _) = random_mat(DType::Q8_0, 8, 2, 1);
    let m = QuantColumns::from_mat(MatRef::new(DType::Q8_0, 8, 64, &data).unwrap()).unwrap();
    let mut s = ColumnsScratch::default();
    let mut out = vec![0f32; 8];
    assert!(columns_axpy(&m, &[64], &[1.0], &mut out, &mut s).is_err(), "index past the inputs");
    assert!(columns_axpy(&m, &[1, 2], &[1.0], &mut out, &mut s).is_err(), "fewer coefficients");
    assert!(columns_axpy(&m, &[1], &[1.0], &mut out[..7], &mut s).is_err(), "short output");
    let (k, _) = random_mat(DType::Q4_K, 8, 1, 2);
    assert!(QuantColumns::from_mat(MatRef::new(DType::Q4_K, 8, 256, &k).unwrap()).is_err(), "k-quants are not taken");
}

/// Every quant at its largest and every coefficient equal: the i16 sums of the integer body sit
/// at their bound, so flushing them to i32 too late would overflow.
#[test]
fn largest_quants_do_not_overflow() {
    let one = half::f16::from_f32(1.0).to_le_bytes();
    for (dtype, block) in [
        (DType::Q4_0, [&one[..], &[0xFF; 16]].concat()),
        (DType::Q4_1, [&one[..], &one[..], &[0xFF; 16]].concat()),
        (DType::Q5_0, [&one[..], &[0xFF; 4], &[0xFF; 16]].concat()),
        (DType::Q5_1, [&one[..], &one[..], &[0xFF; 4], &[0xFF; 16]].concat()),
    ] {
        let (outputs, blocks) = (64, 2);
        let inputs = blocks * 32;
        let data: Vec<u8> = (0..outputs * blocks).flat_map(|_| block.clone()).collect();
        let w = dequantize_ref(dtype, &data);
        let m = QuantColumns::from_mat(MatRef::new(dtype, outputs, inputs, &data).unwrap()).unwrap();
        let idx: Vec<u32> = (0..inputs as u32).collect();
        let coef = vec![1.0f32; inputs];
        check_every_kernel(&format!("largest {dtype}"), &m, &w, &idx, &coef, &mut ColumnsScratch::default());
    }
}
