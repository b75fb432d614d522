//! The sparse FFN products of decode (`ember_kernels::cpu::sparse`), each CPU variant, one
//! thread, at the synthetic `small` model's shape (dim 1024, FFN 4096) with 10% and 40% of the
//! neurons active:
//!
//! - `axpy_<active>/<kernel>`: `down` over the active neurons, from the transposed 8-bit copy;
//! - `columns_<active>/<kernel>`: the same from a Q4_0 `down`'s own quants moved into columns
//!   (`ember_kernels::cpu::columns`);
//! - `gather_<active>/<kernel>`: gate and up rows of the active neurons (Q4_0), side by side as
//!   in the hot-ordered bundle.
//!
//! Each iteration works on the next of `LAYERS` separate copies (more bytes than the last-level
//! cache holds), so rows come from memory as in a decode step, not from cache. Throughput is in
//! weight elements read. Run: `cargo bench -p ember-benches --bench sparse_ffn`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ember_kernels::cpu::columns::{columns_axpy_with, ColumnsKernel, ColumnsScratch, QuantColumns};
use ember_kernels::cpu::sparse::{axpy_rows_with, AxpyKernel, AxpyScratch, ColumnMajor};
use ember_kernels::quant::q8::{quantize_q8, Q8Acts};
use ember_kernels::quant::{DType, RowKernels};
use ember_kernels::MatRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 1024;
const FFN: usize = 4096;
const LAYERS: usize = 12;
const ACTIVE: [f64; 2] = [0.1, 0.4];

/// A random f32 matrix of `rows × cols`, as little-endian bytes.
fn random_f32(rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    (0..rows * cols).flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes()).collect()
}

/// Random Q4_0 rows with finite scales.
fn random_q4_0(rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rows * cols / 32 * 18).map(|_| rng.gen()).collect();
    for block in bytes.chunks_exact_mut(18) {
        block[..2].copy_from_slice(&0x2a66u16.to_le_bytes()); // 0.05 as f16
    }
    bytes
}

fn active(n: usize, fraction: f64, rng: &mut StdRng) -> Vec<u32> {
    (0..n as u32).filter(|_| rng.gen_bool(fraction)).collect()
}

fn axpy(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let copies: Vec<ColumnMajor> = (0..LAYERS)
        .map(|_| {
            let down = random_f32(DIM, FFN, &mut rng);
            ColumnMajor::from_mat(MatRef::new(DType::F32, DIM, FFN, &down).expect("shape")).expect("copy")
        })
        .collect();
    let mut scratch = AxpyScratch::default();
    down_groups(c, "axpy", &copies, AxpyKernel::detected(), &mut rng, |k, m, idx, coef, out| {
        axpy_rows_with(k, m, idx, coef, out, &mut scratch).expect("axpy")
    });
}

fn columns(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mats: Vec<QuantColumns> = (0..LAYERS)
        .map(|_| {
            let down = random_q4_0(DIM, FFN, &mut rng);
            QuantColumns::from_mat(MatRef::new(DType::Q4_0, DIM, FFN, &down).expect("shape")).expect("columns")
        })
        .collect();
    let mut scratch = ColumnsScratch::default();
    down_groups(c, "columns", &mats, ColumnsKernel::detected(), &mut rng, |k, m, idx, coef, out| {
        columns_axpy_with(k, m, idx, coef, out, &mut scratch).expect("columns")
    });
}

/// One group per active fraction, one function per kernel: `run(kernel, layer's matrix, active
/// neurons, their coefficients, out)` on the next layer each iteration, on one thread.
fn down_groups<M: Sync, K: std::fmt::Debug + Copy + Send + Sync>(
    c: &mut Criterion,
    name: &str,
    mats: &[M],
    kernels: Vec<K>,
    rng: &mut StdRng,
    mut run: impl FnMut(K, &M, &[u32], &[f32], &mut [f32]) + Send,
) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    for fraction in ACTIVE {
        let idx = active(FFN, fraction, rng);
        let coef: Vec<f32> = idx.iter().map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut out = vec![0f32; DIM];
        let mut group = c.benchmark_group(format!("{name}_{:.0}%", fraction * 100.0));
        group.throughput(Throughput::Elements((idx.len() * DIM) as u64));
        for &kernel in &kernels {
            let mut layer = 0;
            group.bench_function(format!("{kernel:?}"), |b| {
                b.iter(|| {
                    layer = (layer + 1) % mats.len();
                    pool.install(|| run(kernel, &mats[layer], black_box(&idx), &coef, &mut out));
                })
            });
        }
        group.finish();
    }
}

fn gather(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let bundles: Vec<Vec<u8>> = (0..LAYERS).map(|_| random_q4_0(2 * FFN, DIM, &mut rng)).collect();
    let row_bytes = DType::Q4_0.row_bytes(DIM).expect("whole blocks");
    let x: Vec<f32> = (0..DIM).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut acts = Q8Acts::default();
    quantize_q8(&x, &mut acts);
    // 70% and 100% too: a token keeping most rows reads them nearly as fast per byte as all of
    // them only if skipping scattered rows saves memory traffic.
    for fraction in [ACTIVE[0], ACTIVE[1], 0.7, 1.0] {
        let rows: Vec<u32> = active(FFN, fraction, &mut rng).iter().flat_map(|&p| [2 * p, 2 * p + 1]).collect();
        let mut out = vec![0f32; rows.len()];
        let mut group = c.benchmark_group(format!("gather_{:.0}%", fraction * 100.0));
        group.throughput(Throughput::Elements((rows.len() * DIM) as u64));
        for (name, dot) in RowKernels::legacy_q8_gather_variants(DType::Q4_0) {
            let mut layer = 0;
            group.bench_function(name, |b| {
                b.iter(|| {
                    layer = (layer + 1) % LAYERS;
                    dot(&bundles[layer], row_bytes, black_box(&rows), acts.as_ref(), &mut out);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, axpy, columns, gather);
criterion_main!(benches);
