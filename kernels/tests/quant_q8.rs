//! Integer dots of the legacy formats with 8-bit activations (`RowKernels::dot_q8`) and the
//! activation quantizer (`quantize_q8`), against:
//! - the portable integer dot (every SIMD variant must compute the same integers: only the order
//!   of the f32 additions may differ);
//! - the f64 dot of `reference::dequantize_ref(row)` with the *dequantized* activations `d·q`
//!   (the integer formula itself, independent of the kernels);
//! - the exact f32 dot `reference::dot_ref(dequantize_ref(row), x)`, within the error that 8-bit
//!   activations allow;
//! - the portable quantizer (every variant must give the same bytes).
//!
//! Rows are random bytes with finite f16 scales in ±0.05 (as in `tests/quant.rs`), 1..=16 blocks,
//! read from an odd address; activations are uniform in ±3 with some blocks scaled by 1e-3 or 0.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::quant::q8::{
    quantize_q8, quantize_q8_rows, quantize_q8_variants, DotQ8, Q8Acts, Q8Ref,
};
use ember_kernels::quant::{DType, RowKernels};
use ember_kernels::reference::{dequantize_ref, dot_ref};
use half::f16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Float-order tolerance, relative to the magnitude of the per-block float terms
/// (`Σ_b d_a,b·Σ_j |y_j|·(QMAX·|d_b| + |m_b|)`): the integer sums are exact, so variants differ
/// only by the rounding of one product per block and of ≤ 20 additions (≈ 20 · 6e-8 ≈ 1.2e-6).
const FLOAT_ORDER_TOL: f64 = 1e-5;
/// The activation error in quantization steps: `|x − d·q| ≤ ACT_ERROR_STEPS · d` with
/// `d = max|x| / 127`. Half a step from rounding, plus the rounding of `x·(1/d)` (≤ 127 · 2 ulp ≈
/// 1.5e-5 steps) and of `d` itself. So a block's dot is off by at most
/// `ACT_ERROR_STEPS · d_a · Σ|w_i|` = `max|x| / 254 · Σ|w_i|` (plus float order).
const ACT_ERROR_STEPS: f64 = 0.5 + 1e-4;
/// Random cases per property and format.
const CASES: u32 = 256;

const LEGACY: [DType; 5] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
];

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

/// Byte offsets of the f16 fields `d` and (for the `_1` formats) `m`, from ggml-common.h.
fn scale_fields(dtype: DType) -> (usize, Option<usize>) {
    match dtype {
        DType::Q4_1 | DType::Q5_1 => (0, Some(2)),
        _ => (0, None),
    }
}

/// The largest `|q − offset|` of a format's weight quants.
fn qmax(dtype: DType) -> f64 {
    match dtype {
        DType::Q4_0 => 8.0,
        DType::Q4_1 => 15.0,
        DType::Q5_0 => 16.0,
        DType::Q5_1 => 31.0,
        DType::Q8_0 => 128.0,
        _ => unreachable!("not a legacy format"),
    }
}

fn f16_at(b: &[u8], off: usize) -> f64 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f64()
}

use rows::{random_row, random_x};

/// A copy of `row` that starts at an odd address, as rows of a memory-mapped file may.
fn unaligned(row: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; row.len() + 1];
    buf[1..].copy_from_slice(row);
    (buf, 1)
}

/// The magnitude of the float terms of the integer dot, for [`FLOAT_ORDER_TOL`].
fn float_magnitude(dtype: DType, row: &[u8], acts: Q8Ref<'_>) -> f64 {
    let (d_at, m_at) = scale_fields(dtype);
    row.chunks_exact(dtype.block_bytes())
        .enumerate()
        .map(|(b, block)| {
            let abs_y: f64 = acts.qs[32 * b..32 * b + 32]
                .iter()
                .map(|&y| (y as f64).abs())
                .sum();
            let m = m_at.map_or(0.0, |at| f16_at(block, at).abs());
            acts.d[b] as f64 * abs_y * (qmax(dtype) * f16_at(block, d_at).abs() + m)
        })
        .sum()
}

fn q8(x: &[f32]) -> Q8Acts {
    let mut acts = Q8Acts::default();
    quantize_q8(x, &mut acts);
    acts
}

fn variants(dtype: DType) -> Vec<(&'static str, DotQ8)> {
    let v = RowKernels::legacy_q8_variants(dtype);
    assert_eq!(
        v.first().map(|v| v.0),
        Some("portable"),
        "{dtype}: portable first"
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Dot checks
// ---------------------------------------------------------------------------------------------

/// (a) Every variant (and `dot_q8`'s choice) equals the portable integer dot up to float order.
fn variants_match_portable(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let acts = q8(&random_x(32 * blocks, &mut rng));
    let (buf, at) = unaligned(&row);
    let all = variants(dtype);
    let want = (all[0].1)(&row, acts.as_ref()) as f64;
    let tol = FLOAT_ORDER_TOL * float_magnitude(dtype, &row, acts.as_ref());
    let best = RowKernels::dot_q8(dtype).expect("legacy formats have an integer dot");
    for (name, dot) in all.into_iter().chain([("dot_q8", best)]) {
        let got = dot(&buf[at..], acts.as_ref()) as f64;
        assert!(
            (got - want).abs() <= tol,
            "{name} {dtype}, {blocks} blocks, seed {seed}: got {got}, portable {want}, tolerance {tol:e}"
        );
    }
}

/// (a') Every many-rows kernel gives each row the portable integer dot (up to float order), for
/// any row count (groups of four and the rest), leaving entries past the rows it was given alone.
fn rows_kernels_match_portable(dtype: DType, rows: usize, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w: Vec<Vec<u8>> = (0..rows).map(|_| random_row(dtype, blocks, &mut rng)).collect();
    let acts = q8(&random_x(32 * blocks, &mut rng));
    let (buf, at) = unaligned(&w.concat());
    let portable = variants(dtype)[0].1;
    let row_bytes = w.first().map_or(1, Vec::len);
    for (name, dot_rows) in RowKernels::legacy_q8_rows_variants(dtype) {
        let mut out = vec![f32::NAN; rows + 1]; // one more entry than rows: must stay NaN
        dot_rows(&buf[at..], row_bytes, acts.as_ref(), &mut out);
        for (r, row) in w.iter().enumerate() {
            let want = portable(row, acts.as_ref()) as f64;
            let tol = FLOAT_ORDER_TOL * float_magnitude(dtype, row, acts.as_ref());
            let got = out[r] as f64;
            assert!(
                (got - want).abs() <= tol,
                "{name} rows {dtype}, row {r} of {rows}, {blocks} blocks, seed {seed}: got {got}, portable {want}"
            );
        }
        assert!(out[rows].is_nan(), "{name} rows {dtype}: wrote past the {rows} rows it was given");
    }
}

/// (b) Every variant equals the f64 dot of the reference weights with the dequantized
/// activations `d_a·q`: the integer formula, up to float order.
fn matches_dequantized_activations(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let acts = q8(&random_x(32 * blocks, &mut rng));
    let w = dequantize_ref(dtype, &row);
    let want: f64 = w
        .iter()
        .zip(&acts.qs)
        .enumerate()
        .map(|(i, (&w, &q))| w as f64 * acts.d[i / 32] as f64 * q as f64)
        .sum();
    let tol = FLOAT_ORDER_TOL * float_magnitude(dtype, &row, acts.as_ref());
    for (name, dot) in variants(dtype) {
        let got = dot(&row, acts.as_ref()) as f64;
        assert!(
            (got - want).abs() <= tol,
            "{name} {dtype}, {blocks} blocks, seed {seed}: got {got}, Σ w·d_a·q = {want}, tolerance {tol:e}"
        );
    }
}

/// (c) Every variant approximates the exact f32 dot within the 8-bit activation error.
fn approximates_exact_dot(dtype: DType, blocks: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let row = random_row(dtype, blocks, &mut rng);
    let x = random_x(32 * blocks, &mut rng);
    let acts = q8(&x);
    let w = dequantize_ref(dtype, &row);
    let want = dot_ref(&w, &x) as f64;
    let act_error: f64 = w
        .chunks_exact(32)
        .zip(&acts.d)
        .map(|(w, &d)| {
            ACT_ERROR_STEPS * d as f64 * w.iter().map(|w| (*w as f64).abs()).sum::<f64>()
        })
        .sum();
    let exact_scale: f64 = w
        .iter()
        .zip(&x)
        .map(|(&w, &x)| (w as f64 * x as f64).abs())
        .sum();
    let tol =
        act_error + FLOAT_ORDER_TOL * (float_magnitude(dtype, &row, acts.as_ref()) + exact_scale);
    for (name, dot) in variants(dtype) {
        let got = dot(&row, acts.as_ref()) as f64;
        assert!(
            (got - want).abs() <= tol,
            "{name} {dtype}, {blocks} blocks, seed {seed}: got {got}, exact {want}, tolerance {tol:e}"
        );
    }
}

/// The largest quants with the largest activations (`|y| = 127`): `vpmaddubsw` must not saturate
/// (its pairs reach 2·128·127 for Q8_0, the four-block i16 tree 4·2·31·127 for Q5).
fn extreme_quants_do_not_saturate(dtype: DType) {
    let mut rng = StdRng::seed_from_u64(1);
    for blocks in [1, 4, 7, 16] {
        let bb = dtype.block_bytes();
        let mut row = random_row(dtype, blocks, &mut rng);
        let (d_at, m_at) = scale_fields(dtype);
        let scale_end = m_at.unwrap_or(d_at) + 2;
        for block in row.chunks_exact_mut(bb) {
            for byte in &mut block[scale_end..] {
                *byte = match dtype {
                    DType::Q8_0 => [0x80, 0x7F][rng.gen_range(0..2)], // −128 or 127
                    _ => 0xFF,                                        // 15 / 31 everywhere
                };
            }
        }
        for sign in [1.0f32, -1.0] {
            // Every |x| equal: every y = ±127.
            let x: Vec<f32> = (0..32 * blocks)
                .map(|i| if i % 3 == 0 { -sign } else { sign })
                .collect();
            let acts = q8(&x);
            assert!(acts.qs.iter().all(|q| q.abs() == 127));
            let want: f64 = dequantize_ref(dtype, &row)
                .iter()
                .zip(&acts.qs)
                .enumerate()
                .map(|(i, (&w, &q))| w as f64 * acts.d[i / 32] as f64 * q as f64)
                .sum();
            let tol = FLOAT_ORDER_TOL * float_magnitude(dtype, &row, acts.as_ref());
            for (name, dot) in variants(dtype) {
                let got = dot(&row, acts.as_ref()) as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{name} {dtype} {blocks} blocks: got {got}, want {want}"
                );
            }
        }
    }
}

/// Mismatched lengths never panic: a dot reads only the whole blocks that the row and every
/// activation slice hold.
fn short_inputs_use_common_whole_blocks(dtype: DType) {
    let mut rng = StdRng::seed_from_u64(2);
    let bb = dtype.block_bytes();
    let row = random_row(dtype, 9, &mut rng);
    let acts = q8(&random_x(32 * 9, &mut rng));
    let prefix = |k: usize| Q8Ref {
        qs: &acts.qs[..32 * k],
        d: &acts.d[..k],
        sum16: &acts.sum16[..2 * k],
    };
    for (name, dot) in variants(dtype) {
        for k in 0..9 {
            let want = dot(&row[..k * bb], prefix(k));
            let a = acts.as_ref();
            let cases = [
                ("row one byte short", dot(&row[..(k + 1) * bb - 1], a)),
                (
                    "qs short",
                    dot(
                        &row,
                        Q8Ref {
                            qs: &a.qs[..32 * k + 31],
                            ..a
                        },
                    ),
                ),
                ("d short", dot(&row, Q8Ref { d: &a.d[..k], ..a })),
                (
                    "sum16 short",
                    dot(
                        &row,
                        Q8Ref {
                            sum16: &a.sum16[..2 * k + 1],
                            ..a
                        },
                    ),
                ),
            ];
            for (what, got) in cases {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{name} {dtype}, {k} whole blocks, {what}"
                );
            }
        }
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
            fn extreme_quants_do_not_saturate() {
                super::extreme_quants_do_not_saturate(D);
            }

            #[test]
            fn short_inputs_use_common_whole_blocks() {
                super::short_inputs_use_common_whole_blocks(D);
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]

                #[test]
                fn variants_match_portable(blocks in 1usize..=16, seed in any::<u64>()) {
                    super::variants_match_portable(D, blocks, seed);
                }

                #[test]
                fn rows_kernels_match_portable(rows in 0usize..=13, blocks in 1usize..=16, seed in any::<u64>()) {
                    super::rows_kernels_match_portable(D, rows, blocks, seed);
                }

                #[test]
                fn matches_dequantized_activations(blocks in 1usize..=16, seed in any::<u64>()) {
                    super::matches_dequantized_activations(D, blocks, seed);
                }

                #[test]
                fn approximates_exact_dot(blocks in 1usize..=16, seed in any::<u64>()) {
                    super::approximates_exact_dot(D, blocks, seed);
                }
            }
        }
    )*};
}

format_tests! {
    q4_0 => Q4_0,
    q4_1 => Q4_1,
    q5_0 => Q5_0,
    q5_1 => Q5_1,
    q8_0 => Q8_0,
}

#[test]
#[cfg(target_arch = "x86_64")]
fn every_legacy_format_has_a_many_rows_kernel_with_avx2() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
        return;
    }
    for d in LEGACY {
        assert!(RowKernels::dot_q8_rows(d).is_some(), "{d}: no many-rows kernel");
    }
}

#[test]
fn every_legacy_format_has_an_integer_dot() {
    for dtype in DType::ALL {
        let legacy = LEGACY.contains(&dtype);
        assert_eq!(
            RowKernels::legacy_q8_variants(dtype).is_empty(),
            !legacy,
            "{dtype}"
        );
        if legacy {
            assert!(RowKernels::dot_q8(dtype).is_some(), "{dtype}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The activation quantizer
// ---------------------------------------------------------------------------------------------

fn quantize_with(f: fn(&[f32], &mut Q8Acts), x: &[f32]) -> Q8Acts {
    let mut out = Q8Acts::default();
    f(x, &mut out);
    out
}

fn assert_same_acts(what: &str, got: &Q8Acts, want: &Q8Acts) {
    assert_eq!(got.qs, want.qs, "{what}: qs");
    assert_eq!(got.sum16, want.sum16, "{what}: sum16");
    let bits = |d: &[f32]| d.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.d), bits(&want.d), "{what}: d");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Every quantizer variant (and `quantize_q8`) gives the portable bytes exactly: they round
    /// ties the same way (to even), see `quantize_q8`.
    #[test]
    fn quantize_variants_are_bit_identical(blocks in 0usize..=40, seed in any::<u64>()) {
        let x = random_x(32 * blocks, &mut StdRng::seed_from_u64(seed));
        let variants = quantize_q8_variants();
        prop_assert_eq!(variants[0].0, "portable");
        let want = quantize_with(variants[0].1, &x);
        for (name, f) in &variants[1..] {
            assert_same_acts(name, &quantize_with(*f, &x), &want);
        }
        assert_same_acts("quantize_q8", &q8(&x), &want);
    }

    /// `d = max|x| / 127`, `|x − d·q| ≤ ACT_ERROR_STEPS · d`, `|q| ≤ 127`, and `sum16` holds the
    /// sums of 16.
    #[test]
    fn quantize_error_is_within_half_a_step(blocks in 1usize..=40, seed in any::<u64>()) {
        let x = random_x(32 * blocks, &mut StdRng::seed_from_u64(seed));
        for (name, f) in quantize_q8_variants() {
            let acts = quantize_with(f, &x);
            prop_assert_eq!(acts.len(), x.len());
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = acts.d[b];
                prop_assert_eq!(d, amax / 127.0, "{} block {}", name, b);
                for (j, &xv) in xb.iter().enumerate() {
                    let q = acts.qs[32 * b + j];
                    prop_assert!(q >= -127, "{} q {}", name, q);
                    let err = (xv as f64 - d as f64 * q as f64).abs();
                    prop_assert!(err <= ACT_ERROR_STEPS * d as f64, "{} x {} q {} d {}", name, xv, q, d);
                }
            }
            for (g, s) in acts.sum16.iter().enumerate() {
                let want: i16 = acts.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
                prop_assert_eq!(*s, want, "{} sum16[{}]", name, g);
            }
        }
    }
}

/// Ties go to even in every variant: with `max|x| = 127` the scale is exactly 1.
#[test]
fn quantize_rounds_ties_to_even() {
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    let ties = [
        (0.5, 0),
        (1.5, 2),
        (2.5, 2),
        (-0.5, 0),
        (-2.5, -2),
        (3.5, 4),
        (126.5, 126),
    ];
    for (j, (v, _)) in ties.iter().enumerate() {
        x[1 + j] = *v;
    }
    for (name, f) in quantize_q8_variants() {
        let acts = quantize_with(f, &x);
        assert_eq!(acts.d[0], 1.0, "{name}");
        for (j, (v, q)) in ties.iter().enumerate() {
            assert_eq!(acts.qs[1 + j], *q, "{name}: {v}");
        }
    }
}

/// An all-zero block has `d = 0` and `q = 0` (no division by zero), next to a normal one.
#[test]
fn quantize_zero_block() {
    let x: Vec<f32> = (0..64)
        .map(|i| if i < 32 { 0.0 } else { i as f32 })
        .collect();
    for (name, f) in quantize_q8_variants() {
        let acts = quantize_with(f, &x);
        assert_eq!(acts.d[0], 0.0, "{name}");
        assert!(acts.qs[..32].iter().all(|&q| q == 0), "{name}");
        assert_eq!(&acts.sum16[..2], &[0, 0], "{name}");
        assert_eq!(acts.qs[63], 127, "{name}");
    }
}

/// `quantize_q8` reuses its output: a second call replaces the first; `quantize_q8_rows` equals
/// quantizing each row alone, and `Q8Acts::row` views each.
#[test]
fn quantize_rows_and_reuse() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, n) = (3, 96);
    let x = random_x(rows * n, &mut rng);
    let mut acts = q8(&random_x(640, &mut rng));
    quantize_q8_rows(&x, &mut acts);
    assert_same_acts("reused", &acts, &q8(&x));
    for t in 0..rows {
        let one = q8(&x[t * n..(t + 1) * n]);
        let r = acts.row(t, n);
        assert_eq!(r.qs, &one.qs[..], "row {t}");
        assert_eq!(r.d, &one.d[..], "row {t}");
        assert_eq!(r.sum16, &one.sum16[..], "row {t}");
    }
}
