//! The integer dots of the k-quant formats (`RowKernels::dot_q8` for Q2_K … Q6_K) against the
//! naive reference (`reference::dequantize_ref`, a transcription of ggml checked against gguf-py
//! in `quant.rs`), for every variant this CPU runs (`RowKernels::kquants_q8_variants`).
//!
//! Three properties per format, over rows of 1..=8 super-blocks with random quants and finite
//! scales, and activations uniform in ±3 quantized by `quantize_q8`:
//! - every variant equals the portable one up to the order of its f32 operations;
//! - the dot is the exact dot of the dequantized row with the *dequantized activations*
//!   (`d_a·y`), up to f32 rounding — this checks the formula, scales, offsets and minimums;
//! - the dot approximates the exact f32 dot with the original activations within the error that
//!   rounding them to 8 bits allows.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::quant::q8::{quantize_q8, Q8Acts, Q8Ref, Q8_BLOCK};
use ember_kernels::quant::{DType, RowKernels, QK_K};
use ember_kernels::reference::{dequantize_ref, dot_ref};
use half::f16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// f32 rounding, relative to the magnitude `Σ_i (|A_i| + |M_i|)·|x̂_i|` (see [`magnitude`]).
/// A dot adds up to 8·16 = 128 per-group terms, each a product of four f32 (≤ 4 roundings), so
/// the worst case is about (128 + 4)·2⁻²⁴ ≈ 8e-6; over 2000 random rows per format the largest
/// observed difference was 6.4e-8.
const F32_TOL: f64 = 2e-5;

/// Rounding the activations to 8 bits: `quantize_q8` gives every block of 32 the step
/// `d_a = max|x| / 127` and rounds to the nearest step, so `|x_i − d_a·y_i| ≤ d_a / 2`, and the
/// dot's error `|Σ w_i (x_i − d_a·y_i)|` is at most `Σ_i |w_i|·d_a(i) / 2` — this constant is
/// that half step. For x uniform in ±3 (`d_a ≈ 3/127`, mean `|x_i|` = 1.5) the bound is about
/// 0.8 % of `Σ |w_i||x_i|`. Errors of random sign partly cancel: over 2000 random rows per
/// format the largest was 0.19 of the bound (0.15 % of `Σ |w_i||x_i|`).
const ACT_HALF_STEP: f64 = 0.5;
/// Slack on that bound for the f32 arithmetic inside `quantize_q8` (`x / d_a` rounded in f32).
const ACT_SLACK: f64 = 1e-3;

/// Random cases per property and format.
const CASES: u32 = 256;

const KQUANTS: [DType; 5] = [DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K];

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

use rows::{f16_fields, random_row};

fn quantize(x: &[f32]) -> Q8Acts {
    let mut acts = Q8Acts::default();
    quantize_q8(x, &mut acts);
    acts
}

/// The activations as the integer dot sees them: `x̂_i = d_a·y_i`.
fn dequantized_acts(acts: &Q8Acts) -> Vec<f32> {
    acts.qs
        .iter()
        .enumerate()
        .map(|(i, &y)| acts.d[i / Q8_BLOCK] * y as f32)
        .collect()
}

/// `Σ_i (|A_i| + |M_i|)·|x̂_i|` where `w_i = A_i − M_i` splits each weight into its scaled quant
/// and its minimum (`M = 0` for the formats without one): the size of the terms the kernels add,
/// which bounds their f32 rounding even where `A` and `M` cancel. `A` and `M` are the reference
/// dequantization of the row with `dmin`, respectively `d`, set to zero.
fn magnitude(dtype: DType, row: &[u8], xq: &[f32]) -> f64 {
    let fields = f16_fields(dtype);
    let with_zeroed = |off: usize| {
        let mut r = row.to_vec();
        for block in r.chunks_exact_mut(dtype.block_bytes()) {
            block[off..off + 2].copy_from_slice(&[0, 0]);
        }
        dequantize_ref(dtype, &r)
    };
    let (a, m) = match fields {
        &[_, dmin] => (with_zeroed(dmin), with_zeroed(fields[0])),
        _ => (dequantize_ref(dtype, row), vec![0.0; xq.len()]),
    };
    (0..xq.len())
        .map(|i| (a[i].abs() as f64 + m[i].abs() as f64) * xq[i].abs() as f64)
        .sum()
}

/// `row` copied to an odd address, as rows in a memory-mapped file may be.
fn unaligned(row: &[u8]) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut buf = vec![0u8; row.len() + 1];
    buf[1..].copy_from_slice(row);
    (buf, 1..row.len() + 1)
}

fn variants(dtype: DType) -> Vec<(&'static str, ember_kernels::quant::q8::DotQ8)> {
    let v = RowKernels::kquants_q8_variants(dtype);
    assert_eq!(v.first().map(|(name, _)| *name), Some("portable"), "{dtype}");
    v
}

// ---------------------------------------------------------------------------------------------
// Checks, one per property
// ---------------------------------------------------------------------------------------------

/// (a) Every variant equals the portable integer dot up to f32 rounding.
fn variants_match_portable(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let acts = quantize(&x);
    let scale = magnitude(dtype, &row, &dequantized_acts(&acts));
    let (buf, at) = unaligned(&row);
    let all = variants(dtype);
    let want = (all[0].1)(&row, acts.as_ref()) as f64;
    for (name, dot) in &all {
        let got = dot(&buf[at.clone()], acts.as_ref()) as f64;
        let err = (got - want).abs();
        assert!(
            err <= F32_TOL * scale,
            "{name} {dtype}, {blocks} super-blocks, seed {seed}: {got} vs portable {want}, error {err:e} > {F32_TOL:e} · {scale}"
        );
    }
}

/// (a') Every many-rows kernel gives each row the portable integer dot up to f32 rounding, and
/// leaves entries past the rows it was given alone.
fn rows_kernels_match_portable(dtype: DType, rows: usize, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<Vec<u8>> = (0..rows).map(|_| random_row(dtype, blocks, &mut rng)).collect();
    let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let acts = quantize(&x);
    let (buf, at) = unaligned(&w.concat());
    let portable = variants(dtype)[0].1;
    let row_bytes = blocks * dtype.block_bytes();
    for (name, dot_rows) in RowKernels::kquants_q8_rows_variants(dtype) {
        let mut out = vec![f32::NAN; rows + 1];
        dot_rows(&buf[at.clone()], row_bytes, acts.as_ref(), &mut out);
        for (r, row) in w.iter().enumerate() {
            let want = portable(row, acts.as_ref()) as f64;
            let scale = magnitude(dtype, row, &dequantized_acts(&acts));
            let got = out[r] as f64;
            assert!(
                (got - want).abs() <= F32_TOL * scale,
                "{name} rows {dtype}, row {r} of {rows}, {blocks} super-blocks, seed {seed}: {got} vs portable {want}"
            );
        }
        assert!(out[rows].is_nan(), "{name} rows {dtype}: wrote past the {rows} rows it was given");
    }
}

/// (b) Every variant equals `Σ w_i x̂_i` (reference weights, dequantized activations) up to f32
/// rounding.
fn matches_reference_with_quantized_acts(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    check_against_quantized_acts(dtype, &row, &quantize(&x), &format!("seed {seed}"));
}

fn check_against_quantized_acts(dtype: DType, row: &[u8], acts: &Q8Acts, what: &str) {
    let xq = dequantized_acts(acts);
    let want = dot_ref(&dequantize_ref(dtype, row), &xq) as f64;
    let scale = magnitude(dtype, row, &xq);
    for (name, dot) in variants(dtype) {
        let got = dot(row, acts.as_ref()) as f64;
        let err = (got - want).abs();
        assert!(
            err <= F32_TOL * scale,
            "{name} {dtype}, {what}: {got} vs reference {want}, error {err:e} > {F32_TOL:e} · {scale}"
        );
    }
}

/// (c) `dot_q8` approximates the exact dot with the original f32 activations within the
/// activation rounding bound `Σ_i |w_i|·d_a(i)/2` (plus f32 slack).
fn approximates_exact_dot(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let acts = quantize(&x);
    let w = dequantize_ref(dtype, &row);
    let want = dot_ref(&w, &x) as f64;
    let rounding: f64 = (0..w.len())
        .map(|i| w[i].abs() as f64 * acts.d[i / Q8_BLOCK] as f64 * ACT_HALF_STEP)
        .sum();
    let bound = rounding * (1.0 + ACT_SLACK) + F32_TOL * magnitude(dtype, &row, &dequantized_acts(&acts));
    let dot = RowKernels::dot_q8(dtype).expect("a k-quant has an integer dot");
    let got = dot(&row, acts.as_ref()) as f64;
    let err = (got - want).abs();
    let wx: f64 = w.iter().zip(&x).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum();
    assert!(
        err <= bound,
        "{dtype}, {blocks} super-blocks, seed {seed}: {got} vs exact {want}, error {err:e} > bound {bound:e} (Σ|w||x| = {wx})"
    );
}

/// The largest quants (every bit set) against activations of ±127 everywhere: the intermediate
/// i16 sums of the AVX2 kernels are closest to saturating here.
fn extremes_do_not_saturate(dtype: DType) {
    let blocks = 2;
    let mut row = vec![0xFFu8; blocks * dtype.block_bytes()];
    for block in row.chunks_exact_mut(dtype.block_bytes()) {
        for &off in f16_fields(dtype) {
            block[off..off + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
        }
    }
    for sign in [1.0f32, -1.0] {
        let x = vec![3.0 * sign; blocks * QK_K];
        let acts = quantize(&x);
        assert!(acts.qs.iter().all(|&y| y as f32 == 127.0 * sign));
        check_against_quantized_acts(dtype, &row, &acts, &format!("all bits set, x = {}", x[0]));
    }
}

/// Mismatched lengths give a meaningless result, but no panic and no read out of bounds.
fn mismatched_lengths_do_not_panic(dtype: DType) {
    let mut rng = StdRng::seed_from_u64(3);
    let row = random_row(dtype, 2, &mut rng);
    let x: Vec<f32> = (0..2 * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let acts = quantize(&x);
    let a = acts.as_ref();
    let bb = dtype.block_bytes();
    let cases = [
        (&row[..bb], a),
        (&row[..row.len() - 1], a),
        (&row[..], Q8Ref { qs: &a.qs[..QK_K], ..a }),
        (&row[..], Q8Ref { d: &a.d[..3], ..a }),
        (
            &row[..],
            Q8Ref {
                sum16: &a.sum16[..20],
                ..a
            },
        ),
        (&[][..], a),
    ];
    for (name, dot) in variants(dtype) {
        for (r, acts) in cases {
            let _ = dot(r, acts);
        }
        let first = dot(&row[..bb], a);
        let single = dot(
            &row[..bb],
            Q8Ref {
                qs: &a.qs[..QK_K],
                d: &a.d[..8],
                sum16: &a.sum16[..16],
            },
        );
        assert_eq!(first, single, "{name} {dtype}: a one-block row reads one block of acts");
    }
}

// ---------------------------------------------------------------------------------------------
// One module of tests per format
// ---------------------------------------------------------------------------------------------

macro_rules! format_tests {
    ($($module:ident => $dtype:ident,)*) => {$(
        mod $module {
            use super::*;
            const D: DType = DType::$dtype;

            #[test]
            fn extremes_do_not_saturate() {
                super::extremes_do_not_saturate(D);
            }

            #[test]
            fn mismatched_lengths_do_not_panic() {
                super::mismatched_lengths_do_not_panic(D);
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]

                #[test]
                fn variants_match_portable(blocks in 1usize..=8, seed in any::<u64>()) {
                    super::variants_match_portable(D, blocks, seed);
                }

                #[test]
                fn rows_kernels_match_portable(rows in 0usize..=6, blocks in 1usize..=3, seed in any::<u64>()) {
                    super::rows_kernels_match_portable(D, rows, blocks, seed);
                }

                #[test]
                fn matches_reference_with_quantized_acts(blocks in 1usize..=8, seed in any::<u64>()) {
                    super::matches_reference_with_quantized_acts(D, blocks, seed);
                }

                #[test]
                fn approximates_exact_dot(blocks in 1usize..=8, seed in any::<u64>()) {
                    super::approximates_exact_dot(D, blocks, seed);
                }
            }
        }
    )*};
}

format_tests! {
    q2_k => Q2_K,
    q3_k => Q3_K,
    q4_k => Q4_K,
    q5_k => Q5_K,
    q6_k => Q6_K,
}

/// On x86-64, whether this CPU has the AVX2 kernels' features.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn every_kquant_has_an_integer_dot_and_the_best_is_the_last_variant() {
    let mut rng = StdRng::seed_from_u64(5);
    for dtype in KQUANTS {
        let best = RowKernels::dot_q8(dtype).expect("an integer dot");
        let all = variants(dtype);
        if has_avx2() {
            assert!(
                all.iter().any(|(n, _)| *n == "avx2"),
                "{dtype}: no avx2 variant on an AVX2 CPU"
            );
        }
        let row = random_row(dtype, 3, &mut rng);
        let x: Vec<f32> = (0..3 * QK_K).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let acts = quantize(&x);
        let (name, last) = all.last().expect("at least the portable variant");
        assert_eq!(
            best(&row, acts.as_ref()).to_bits(),
            last(&row, acts.as_ref()).to_bits(),
            "{dtype}: dot_q8 is not the {name} variant"
        );
    }
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q8_0] {
        assert!(RowKernels::kquants_q8_variants(dtype).is_empty(), "{dtype}");
    }
}
