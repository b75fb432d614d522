//! Integer dots with 8-bit activations (`RowKernels::dot_q8` and each of its variants) against the
//! f32-activation dots (`RowKernels::for_dtype(d).dot`) for the legacy formats, on the row lengths
//! of the models we run: 576 and 1536 (SmolLM2-135M hidden and FFN), 896 and 4864 (Qwen2.5-0.5B).
//!
//! - `row/<FORMAT>/<n>`: one row (the activation quantization not included; `quantize/<n>` times
//!   it alone);
//! - `matvec_1536x576/<FORMAT>`: a whole 1536×576 matrix times one vector on one thread, the
//!   `q8_*` entries including the one quantization of the vector: the most telling number.
//!
//! - `matvec_rows_<r>x<c>/<FORMAT>`: each many-rows kernel over a whole matrix (decode's path).
//!
//! Throughput is in weight elements per second. Run: `cargo bench -p ember-benches --bench q8_dot`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember_kernels::quant::q8::{quantize_q8, quantize_q8_variants, Q8Acts};
use ember_kernels::quant::{DType, RowKernels};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LEGACY: [DType; 5] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
];
const ROW_LENS: [usize; 4] = [576, 1536, 896, 4864];
const MATRIX: (usize, usize) = (1536, 576); // (rows, cols): SmolLM2's FFN up projection

/// `rows` random rows of `n` elements: random bytes with finite f16 scales in ±0.05.
fn random_rows(dtype: DType, rows: usize, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let mut bytes: Vec<u8> = (0..rows * n / 32 * bb).map(|_| rng.gen()).collect();
    let scales: &[usize] = match dtype {
        DType::Q4_1 | DType::Q5_1 => &[0, 2],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(bb) {
        for &off in scales {
            let bits = half_bits(rng.gen_range(-0.05f32..0.05));
            block[off..off + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    bytes
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

fn random_x(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect()
}

fn rows(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    for dtype in LEGACY {
        let mut group = c.benchmark_group(format!("row/{dtype}"));
        for n in ROW_LENS {
            let row = random_rows(dtype, 1, n, &mut rng);
            let x = random_x(n, &mut rng);
            let mut acts = Q8Acts::default();
            quantize_q8(&x, &mut acts);
            group.throughput(Throughput::Elements(n as u64));
            let f32_dot = RowKernels::for_dtype(dtype).dot;
            group.bench_with_input(BenchmarkId::new("f32", n), &n, |b, _| {
                b.iter(|| f32_dot(black_box(&row), black_box(&x)))
            });
            for (name, dot) in RowKernels::legacy_q8_variants(dtype) {
                group.bench_with_input(BenchmarkId::new(format!("q8_{name}"), n), &n, |b, _| {
                    b.iter(|| dot(black_box(&row), black_box(acts.as_ref())))
                });
            }
        }
        group.finish();
    }
}

fn quantize(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("quantize");
    for n in ROW_LENS {
        let x = random_x(n, &mut rng);
        let mut acts = Q8Acts::default();
        group.throughput(Throughput::Elements(n as u64));
        for (name, f) in quantize_q8_variants() {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    acts.qs.clear();
                    acts.d.clear();
                    acts.sum16.clear();
                    f(black_box(&x), &mut acts)
                })
            });
        }
    }
    group.finish();
}

fn matvec(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = MATRIX;
    for dtype in LEGACY {
        let w = random_rows(dtype, rows, cols, &mut rng);
        let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
        let x = random_x(cols, &mut rng);
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
        for (name, dot) in RowKernels::legacy_q8_variants(dtype) {
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
    }
}

/// The many-rows kernels (`RowKernels::legacy_q8_rows_variants`, what decode runs) over whole
/// matrices at the models' shapes, one thread, the vector quantized once per product.
fn matvec_rows(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, cols) in ROWS_SHAPES {
        for dtype in LEGACY {
            let w = random_rows(dtype, rows, cols, &mut rng);
            let row_bytes = dtype.row_bytes(cols).expect("whole blocks");
            let x = random_x(cols, &mut rng);
            let mut out = vec![0f32; rows];
            let mut acts = Q8Acts::default();
            let mut group = c.benchmark_group(format!("matvec_rows_{rows}x{cols}/{dtype}"));
            group.throughput(Throughput::Elements((rows * cols) as u64));
            for (name, dot_rows) in RowKernels::legacy_q8_rows_variants(dtype) {
                group.bench_function(name, |b| {
                    b.iter(|| {
                        quantize_q8(black_box(&x), &mut acts);
                        dot_rows(&w, row_bytes, acts.as_ref(), &mut out);
                    })
                });
            }
            group.finish();
        }
    }
}

/// (rows, cols) of the many-rows benches: SmolLM2's up and down projections, Qwen2.5-0.5B's up.
const ROWS_SHAPES: [(usize, usize); 3] = [(1536, 576), (576, 1536), (4864, 896)];

criterion_group!(benches, matvec, matvec_rows, rows, quantize);
criterion_main!(benches);
