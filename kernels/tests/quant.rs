//! The GGUF block formats against two oracles:
//! - gguf-py's numpy dequantizers, through the fixtures `fixtures/quant_<FORMAT>.{bin,f32}` made by
//!   `fixtures/make_quant_fixtures.py` (independent of ggml's C code and of ours);
//! - `ember_kernels::reference`, a literal transcription of ggml's `dequantize_row_*`.
//!
//! Every format is checked for both kernel sets: `RowKernels::for_dtype` (AVX2+FMA where this CPU
//! has it) and `RowKernels::portable`.

use ember_kernels::quant::{dequantize_row, dot_row, DType, RowKernels};
use ember_kernels::reference::{dequantize_ref, dot_ref};
use ember_kernels::KernelError;
use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// |fast dot − reference dot| ≤ DOT_REL_TOL · Σ |a_i x_i|: the fast dot accumulates in f32 (with
/// or without FMA), the reference in f64. Observed errors are around 1e-7, so this leaves a margin
/// of 100 while still catching a wrong scale or a lost tail.
const DOT_REL_TOL: f64 = 1e-5;
/// Random cases per property and format.
const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

fn kernel_sets(dtype: DType) -> [(&'static str, RowKernels); 2] {
    [
        ("for_dtype", RowKernels::for_dtype(dtype)),
        ("portable", RowKernels::portable(dtype)),
    ]
}

/// Byte offsets of the f16 scale fields in one block (ggml-common.h), written independently of the
/// kernels: random bytes there could be inf/NaN.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// A row of `n` elements of `dtype`: random bytes with finite scales uniform in ±0.05 for the
/// block formats, random finite values in ±4 for the float formats.
fn random_row(dtype: DType, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let values = |rng: &mut StdRng| (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect::<Vec<_>>();
    match dtype {
        DType::F32 => values(rng).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values(rng)
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values(rng)
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => {
            let bb = dtype.block_bytes();
            let mut bytes: Vec<u8> = (0..n / dtype.block_len() * bb).map(|_| rng.gen()).collect();
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

fn fixture(dtype: DType) -> (Vec<u8>, Vec<f32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let read = |ext: &str| {
        let path = format!("{dir}/quant_{dtype}.{ext}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let values = read("f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (read("bin"), values)
}

/// Element-wise equality (`==`, so 0.0 equals -0.0), reporting the first difference.
fn assert_same(what: &str, dtype: DType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what} {dtype}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what} {dtype}: element {i} (block {}) is {} but should be {}",
            i / dtype.block_len(),
            got[i],
            want[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Checks, one per property
// ---------------------------------------------------------------------------------------------

/// (a) The fast dequantizers reproduce gguf-py exactly.
fn fast_dequantize_matches_fixture(dtype: DType) {
    let (bytes, want) = fixture(dtype);
    for (name, kernels) in kernel_sets(dtype) {
        let mut got = vec![f32::NAN; want.len()];
        (kernels.dequantize)(&bytes, &mut got);
        assert_same(&format!("{name} dequantize vs gguf-py"), dtype, &got, &want);
    }
    let mut got = vec![f32::NAN; want.len()];
    dequantize_row(dtype, &bytes, &mut got).expect("whole blocks");
    assert_same("dequantize_row vs gguf-py", dtype, &got, &want);
}

/// (b) The reference dequantizer reproduces gguf-py exactly.
fn reference_dequantize_matches_fixture(dtype: DType) {
    let (bytes, want) = fixture(dtype);
    assert_same(
        "dequantize_ref vs gguf-py",
        dtype,
        &dequantize_ref(dtype, &bytes),
        &want,
    );
}

/// Elements in a random row: 1..=8 blocks for the block formats, any length up to 300 (to
/// exercise the tails of the chunked loops) for the float formats.
fn row_len(dtype: DType, units: usize) -> usize {
    if dtype.is_quantized() {
        (1 + units % 8) * dtype.block_len()
    } else {
        units
    }
}

/// (c) The fast dot agrees with the f64 dot of the reference dequantization; the row is read from
/// an odd address, as rows in a memory-mapped file may be.
fn dot_matches_reference(dtype: DType, units: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = row_len(dtype, units);
    let row = random_row(dtype, n, &mut rng);
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
    let a = dequantize_ref(dtype, &row);
    let want = dot_ref(&a, &x) as f64;
    let scale: f64 = a.iter().zip(&x).map(|(&a, &x)| (a as f64 * x as f64).abs()).sum();
    let mut unaligned = vec![0u8; row.len() + 1];
    unaligned[1..].copy_from_slice(&row);
    for (name, kernels) in kernel_sets(dtype) {
        let got = (kernels.dot)(&unaligned[1..], &x) as f64;
        let err = (got - want).abs();
        assert!(
            err <= DOT_REL_TOL * scale,
            "{name} dot {dtype}, {n} elements, seed {seed}: got {got}, want {want}, error {err:e} > {DOT_REL_TOL:e} * {scale}"
        );
    }
    let checked = dot_row(dtype, &row, &x).expect("matching lengths") as f64;
    assert!(
        (checked - want).abs() <= DOT_REL_TOL * scale,
        "dot_row {dtype}: got {checked}, want {want}"
    );
}

/// (c) The fast dequantizers agree exactly with the reference on random rows, from an odd address.
fn dequantize_matches_reference(dtype: DType, units: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = row_len(dtype, units);
    let row = random_row(dtype, n, &mut rng);
    let want = dequantize_ref(dtype, &row);
    let mut unaligned = vec![0u8; row.len() + 1];
    unaligned[1..].copy_from_slice(&row);
    for (name, kernels) in kernel_sets(dtype) {
        let mut got = vec![f32::NAN; n];
        (kernels.dequantize)(&unaligned[1..], &mut got);
        assert_same(
            &format!("{name} dequantize vs dequantize_ref (seed {seed})"),
            dtype,
            &got,
            &want,
        );
    }
}

/// (d) Wrong lengths are errors from the checked entry points, and never panics.
fn wrong_lengths_are_errors(dtype: DType) {
    let bl = dtype.block_len();
    let n = 2 * bl;
    let row = random_row(dtype, n, &mut StdRng::seed_from_u64(7));
    let mut out = vec![0f32; n];
    let x = vec![1f32; n];

    for bad in [&row[..row.len() - 1], &[][..]] {
        let err = dequantize_row(dtype, bad, &mut out).expect_err("short row");
        assert!(
            matches!(
                err,
                KernelError::Shape {
                    op: "dequantize_row",
                    ..
                }
            ),
            "{dtype}: {err}"
        );
        let err = dot_row(dtype, bad, &x).expect_err("short row");
        assert!(
            matches!(err, KernelError::Shape { op: "dot_row", .. }),
            "{dtype}: {err}"
        );
    }
    let long = [row.as_slice(), &[0u8]].concat();
    assert!(matches!(
        dequantize_row(dtype, &long, &mut out),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(dot_row(dtype, &long, &x), Err(KernelError::Shape { .. })));

    if bl > 1 {
        let partial = n - 1;
        let err = dtype.row_bytes(partial).expect_err("partial block");
        assert!(
            matches!(err, KernelError::PartialBlock { cols, block, .. } if cols == partial && block == bl),
            "{err}"
        );
        assert!(matches!(
            dot_row(dtype, &row, &x[..partial]),
            Err(KernelError::PartialBlock { .. })
        ));
        assert!(matches!(
            dequantize_row(dtype, &row, &mut out[..partial]),
            Err(KernelError::PartialBlock { .. })
        ));
    }
    assert_eq!(dtype.row_bytes(n).expect("whole blocks"), row.len());

    // The unchecked kernels: a mismatch gives a meaningless result, but no panic.
    let bb = dtype.block_bytes();
    for (_, kernels) in kernel_sets(dtype) {
        for (bytes, len) in [
            (&row[..], n - bl),
            (&row[..row.len() - bb], n),
            (&row[..row.len() - 1], n),
            (&row[..], 0),
        ] {
            let _ = (kernels.dot)(bytes, &x[..len]);
            (kernels.dequantize)(bytes, &mut out[..len]);
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
            fn fast_dequantize_matches_gguf_py() {
                fast_dequantize_matches_fixture(D);
            }

            #[test]
            fn reference_dequantize_matches_gguf_py() {
                reference_dequantize_matches_fixture(D);
            }

            #[test]
            fn wrong_lengths_are_errors() {
                super::wrong_lengths_are_errors(D);
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(CASES))]

                #[test]
                fn dot_matches_reference(units in 1usize..=300, seed in any::<u64>()) {
                    super::dot_matches_reference(D, units, seed);
                }

                #[test]
                fn dequantize_matches_reference(units in 1usize..=300, seed in any::<u64>()) {
                    super::dequantize_matches_reference(D, units, seed);
                }
            }
        }
    )*};
}

format_tests! {
    float32 => F32,
    float16 => F16,
    bfloat16 => BF16,
    q4_0 => Q4_0,
    q4_1 => Q4_1,
    q5_0 => Q5_0,
    q5_1 => Q5_1,
    q8_0 => Q8_0,
    q2_k => Q2_K,
    q3_k => Q3_K,
    q4_k => Q4_K,
    q5_k => Q5_K,
    q6_k => Q6_K,
}

#[test]
fn every_format_has_a_fixture_and_kernels_for_its_own_dtype() {
    for dtype in DType::ALL {
        let (bytes, values) = fixture(dtype);
        assert_eq!(
            dtype.row_bytes(values.len()).expect("whole blocks"),
            bytes.len(),
            "{dtype}"
        );
        assert_eq!(RowKernels::for_dtype(dtype).dtype, dtype);
        assert_eq!(RowKernels::portable(dtype).dtype, dtype);
    }
}

/// Quantizing then dequantizing (by the reference) returns each value within half a step of
/// its block's scale (Q4_0: one step, as ggml clamps the side opposite the largest magnitude to
/// 7 steps); unsupported formats are errors.
#[test]
fn quantize_row_round_trips_within_half_a_step() {
    use ember_kernels::quant::quantize::quantize_row;
    let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    for (dtype, levels) in [(DType::Q8_0, 127.0f32), (DType::Q4_0, 4.0), (DType::F16, 0.0), (DType::F32, 0.0)] {
        let bytes = quantize_row(dtype, &x).unwrap();
        let back = ember_kernels::reference::dequantize_ref(dtype, &bytes);
        for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol = if levels > 0.0 { amax / levels * 0.5 + 1e-3 * amax } else { amax * 1e-3 };
            for (v, w) in xs.iter().zip(ys) {
                assert!((v - w).abs() <= tol, "{dtype} block {b}: {v} came back as {w} (tolerance {tol})");
            }
        }
    }
    assert!(quantize_row(DType::Q4_K, &x).is_err());
    assert!(quantize_row(DType::Q8_0, &x[..31]).is_err());
}
