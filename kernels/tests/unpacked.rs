//! Unpacked rows (the prefill's form of the 4/5/6-bit formats): the unpacked values equal the
//! reference dequantization, and the SIMD dot equals the portable one and the formats' own
//! integer dots, for many shapes and seeds.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::quant::q8::{quantize_q8, Q8Acts};
use ember_kernels::quant::unpacked::{can_unpack, dot_rows, dot_rows2, dot_rows_portable, unpack_rows, Unpacked};
use ember_kernels::quant::{DType, RowKernels};
use ember_kernels::reference::dequantize_ref;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// f32 rounding of `d·q + m` against the reference's own f32 formula, relative to the magnitude.
const F32_TOL: f32 = 1e-5;

const FORMATS: [DType; 7] = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K];

fn unpack(dtype: DType, rows: usize, blocks: usize, seed: u64) -> (Vec<u8>, usize, Unpacked) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<u8> = (0..rows).flat_map(|_| rows::random_row(dtype, blocks, &mut rng)).collect();
    let cols = blocks * dtype.block_len();
    let mut u = Unpacked::default();
    assert!(unpack_rows(dtype, &data, dtype.row_bytes(cols).unwrap(), cols, &mut u), "{dtype} unpacks");
    (data, cols, u)
}

fn values_equal_reference(dtype: DType, rows: usize, blocks: usize, seed: u64) {
    let (data, cols, u) = unpack(dtype, rows, blocks, seed);
    let want = dequantize_ref(dtype, &data);
    let nblk = cols / 32;
    for r in 0..rows {
        for j in 0..cols {
            let d = u.dv[(r * nblk + j / 32) * 8 + 4 * ((j % 32) / 16)];
            let m = u.m[r * cols / 16 + j / 16];
            let got = d * u.q[r * cols + j] as f32 + m;
            let w = want[r * cols + j];
            let scale = d.abs() * 63.0 + m.abs() + w.abs();
            assert!(
                (got - w).abs() <= F32_TOL * scale,
                "{dtype} row {r} element {j} (seed {seed}): unpacked {got}, reference {w}"
            );
            assert!(u.q[r * cols + j] <= 63, "{dtype}: quant {} above 63", u.q[r * cols + j]);
        }
    }
}

fn dots_agree(dtype: DType, rows: usize, blocks: usize, seed: u64) {
    let (data, cols, u) = unpack(dtype, rows, blocks, seed);
    let x = rows::random_x(cols, &mut StdRng::seed_from_u64(seed ^ 1));
    let mut acts = Q8Acts::default();
    quantize_q8(&x, &mut acts);
    let (mut simd, mut portable) = (vec![f32::NAN; rows + 1], vec![f32::NAN; rows + 1]);
    dot_rows(&u, acts.as_ref(), &mut simd);
    dot_rows_portable(&u, acts.as_ref(), &mut portable);
    let own = RowKernels::dot_q8(dtype).expect("an integer dot");
    let rb = dtype.row_bytes(cols).unwrap();
    for r in 0..rows {
        let want = own(&data[r * rb..(r + 1) * rb], acts.as_ref());
        let xq: Vec<f32> = (0..cols).map(|j| acts.d[j / 32] * acts.qs[j] as f32).collect();
        let w = dequantize_ref(dtype, &data[r * rb..(r + 1) * rb]);
        let magnitude: f32 = w.iter().zip(&xq).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
        for (name, got) in [("simd", simd[r]), ("portable", portable[r])] {
            assert!(
                (got - want).abs() <= F32_TOL * magnitude,
                "{dtype} {name} row {r} of {rows}, {blocks} blocks (seed {seed}): {got} vs the format's integer dot {want}"
            );
        }
    }
    assert!(simd[rows].is_nan() && portable[rows].is_nan(), "{dtype}: wrote past the rows");

    // Two tokens at once: each the same as alone (the same operations in the same order).
    let x2 = rows::random_x(cols, &mut StdRng::seed_from_u64(seed ^ 2));
    let mut acts2 = Q8Acts::default();
    quantize_q8(&x2, &mut acts2);
    let mut alone2 = vec![f32::NAN; rows + 1];
    dot_rows(&u, acts2.as_ref(), &mut alone2);
    let (mut pair0, mut pair1) = (vec![f32::NAN; rows + 1], vec![f32::NAN; rows + 1]);
    dot_rows2(&u, [acts.as_ref(), acts2.as_ref()], [&mut pair0, &mut pair1]);
    for r in 0..rows {
        assert_eq!(pair0[r].to_bits(), simd[r].to_bits(), "{dtype} two tokens, row {r}, first token (seed {seed})");
        assert_eq!(pair1[r].to_bits(), alone2[r].to_bits(), "{dtype} two tokens, row {r}, second token (seed {seed})");
    }
    assert!(pair0[rows].is_nan() && pair1[rows].is_nan(), "{dtype}: two tokens wrote past the rows");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn unpacked_values_equal_the_reference(f in 0usize..FORMATS.len(), rows in 1usize..4, blocks in 1usize..6, seed in any::<u64>()) {
        let dtype = FORMATS[f];
        let blocks = if dtype.block_len() == 256 { blocks.min(2) } else { blocks };
        values_equal_reference(dtype, rows, blocks, seed);
    }

    #[test]
    fn unpacked_dots_equal_the_formats_integer_dots(f in 0usize..FORMATS.len(), rows in 1usize..6, blocks in 1usize..20, seed in any::<u64>()) {
        let dtype = FORMATS[f];
        let blocks = if dtype.block_len() == 256 { blocks.div_ceil(8) } else { blocks };
        dots_agree(dtype, rows, blocks, seed);
    }
}

#[test]
fn other_formats_and_bad_sizes_are_refused() {
    let mut u = Unpacked::default();
    assert!(!can_unpack(DType::Q8_0) && !can_unpack(DType::F16));
    assert!(!unpack_rows(DType::Q8_0, &[0; 34], 34, 32, &mut u));
    assert!(!unpack_rows(DType::Q4_0, &[0; 17], 18, 32, &mut u), "a truncated row");
    assert!(!unpack_rows(DType::Q4_0, &[0; 18], 18, 33, &mut u), "columns not a block multiple");
    assert_eq!(u.rows, 0);
}

#[test]
fn long_rows_agree() {
    // Past 32 steps of 8 blocks (8192 columns), where the 512-bit kernel prepares the
    // activations in more than one chunk, with a tail of blocks after the last step.
    dots_agree(DType::Q4_0, 3, 8 * 33 + 3, 5);
    dots_agree(DType::Q6_K, 2, 34, 6);
}
