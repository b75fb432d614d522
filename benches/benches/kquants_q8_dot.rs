//! Integer dots with 8-bit activations (`RowKernels::dot_q8` and each of its variants) against the
//! f32-activation dots (`RowKernels::for_dtype(d).dot`) for the k-quant formats, over whole
//! matrices of Qwen2.5-0.5B's FFN shapes on one thread: 896×4864 (down), and 4864×1024 for
//! gate/up. Those are 4864×896 in the model, but 896 is not a whole number of 256-element
//! super-blocks, so no GGUF stores them in a k-quant (llama.cpp falls back to Q5_0/Q8_0 there):
//! in Qwen2.5-0.5B only `ffn_down` is Q4_K/Q6_K. 1024 is the nearest length that is.
//!
//! `matvec_<rows>x<cols>/<FORMAT>/<variant>`: every row of the matrix dotted with one vector; the
//! `q8_*` entries include the one quantization of the vector (`quantize_q8`), as a matrix product
//! does. Throughput is in weight elements per second.
//!
//! Run: `cargo bench -p ember-benches --bench kquants_q8_dot`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ember_kernels::quant::q8::{quantize_q8, Q8Acts};
use ember_kernels::quant::{DType, RowKernels, QK_K};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Qwen's formats first.
const KQUANTS: [DType; 5] = [DType::Q4_K, DType::Q6_K, DType::Q5_K, DType::Q2_K, DType::Q3_K];
/// (rows, cols): Qwen2.5-0.5B's FFN down projection, and its gate/up with 896 → 1024 columns.
const SHAPES: [(usize, usize); 2] = [(896, 4864), (4864, 1024)];

/// Byte offsets of a super-block's f16 fields (`d`, `dmin`), from ggml-common.h.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q4_K | DType::Q5_K => &[0, 2],
        _ => &[208],
    }
}

/// f32 → IEEE half bits for normal values in ±0.05 (truncating; the benches need no rounding).
fn half_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

/// `rows` random rows of `n` elements: random bytes with finite f16 scales in ±0.05.
fn random_rows(dtype: DType, rows: usize, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut bytes: Vec<u8> = (0..rows * n / QK_K * bb).map(|_| rng.gen()).collect();
    for block in bytes.chunks_exact_mut(bb) {
        for &off in f16_fields(dtype) {
            let bits = half_bits(rng.gen_range(-0.05f32..0.05));
            block[off..off + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    bytes
}

fn matvec(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    for (rows, cols) in SHAPES {
        for dtype in KQUANTS {
            let w = random_rows(dtype, rows, cols, &mut rng);
            let row_bytes = dtype.row_bytes(cols).expect("whole super-blocks");
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let mut out = vec![0f32; rows];
            let mut group = c.benchmark_group(format!("matvec_{rows}x{cols}/{dtype}"));
            group.throughput(Throughput::Elements((rows * cols) as u64));
            let f32_dot = RowKernels::for_dtype(dtype).dot;
            group.bench_function("f32", |b| {
                b.iter(|| {
                    for (o, r) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                        *o = f32_dot(r, black_box(&x));
                    }
                })
            });
            let mut acts = Q8Acts::default();
            for (name, dot) in RowKernels::kquants_q8_variants(dtype) {
                group.bench_function(format!("q8_{name}"), |b| {
                    b.iter(|| {
                        quantize_q8(black_box(&x), &mut acts);
                        for (o, r) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                            *o = dot(r, acts.as_ref());
                        }
                    })
                });
            }
            group.finish();
            black_box(&out);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = matvec
}
criterion_main!(benches);
