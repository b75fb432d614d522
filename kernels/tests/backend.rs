//! One test per `Backend` op, run on every backend compiled in (llama.cpp's `test-backend-ops`,
//! candle's `test_device!`): the CPU backend always, wgpu adapter 0 with `--features wgpu`
//! (skipped with a line when there is none, unless `EMBER_REQUIRE_WGPU=1`), CUDA device 0 with
//! `--features cuda` (likewise, with `EMBER_REQUIRE_CUDA=1`). Each op is checked against the
//! naive reference (`reference::dequantize_ref`, f64 loops here) over many seeded random shapes.
//!
//! Tolerances, one named constant per op:
//! - products (`matmul`, `matvec_rows`): a backend may read the input quantized to 8 bits per
//!   block of 32 as the CPU does (`d_a = max|x|/127`, error ≤ `d_a/2` per element), so
//!   `|got − want| ≤ ACT_Q8_SLACK·Σ_j |w_j|·d_a(j)` for the quantized formats, plus
//!   `PRODUCT_TOL·Σ_j |w_j x_j|` for the order of float additions;
//! - `axpy_rows`: `PRODUCT_TOL·Σ_k |c_k w_k|` (weights are dequantized exactly);
//! - the others: relative to the magnitudes involved, see each constant.

#[path = "common/rows.rs"]
mod rows;

use ember_kernels::backend::cpu::CpuBackend;
use ember_kernels::backend::{AttnShape, Backend, DeviceMat, Elementwise, GluAct};
use ember_kernels::quant::DType;
use ember_kernels::reference::{dequantize_ref, rms_norm_ref};
use ember_kernels::{KernelError, MatRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Float-order slack of a sum, relative to the sum of the magnitudes of its terms.
const PRODUCT_TOL: f64 = 2e-5;
/// The 8-bit input's rounding a backend may add to a quantized product (half a step, plus a
/// hair for the step's own rounding).
const ACT_Q8_SLACK: f64 = 0.5 + 1e-4;
/// RMSNorm: relative to |x·scale·w| of each element.
const NORM_TOL: f64 = 1e-5;
/// RoPE: relative to |x0| + |x1| of the pair.
const ROPE_TOL: f64 = 1e-6;
/// Attention: relative to the largest |v| (the output is a convex combination of value rows).
const ATTENTION_TOL: f64 = 1e-5;
/// Elementwise: relative to 1 + |want| (GPU exp/tanh are a few ulps off).
const ELEMENTWISE_TOL: f64 = 1e-5;

type Backends = Vec<(String, Box<dyn Backend>)>;

/// The backends under test: add a device here with a few lines.
fn backends() -> Backends {
    #[allow(unused_mut)] // without a device feature, the CPU is the only backend
    let mut v: Backends = vec![("cpu".into(), Box::new(CpuBackend::new()))];
    #[cfg(feature = "wgpu")]
    match ember_kernels::backend::wgpu::WgpuBackend::new(0, false) {
        Ok(b) => v.push((b.name(), Box::new(b))),
        Err(e) if std::env::var("EMBER_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("EMBER_REQUIRE_WGPU=1 but the wgpu backend did not open: {e}")
        }
        Err(e) => eprintln!("backend tests: skipping wgpu: {e}"),
    }
    #[cfg(feature = "cuda")]
    match ember_kernels::backend::cuda::CudaBackend::new(0) {
        Ok(b) => v.push((b.name(), Box::new(b))),
        Err(e) if std::env::var("EMBER_REQUIRE_CUDA").as_deref() == Ok("1") => {
            panic!("EMBER_REQUIRE_CUDA=1 but the cuda backend did not open: {e}")
        }
        Err(e) => eprintln!("backend tests: skipping cuda: {e}"),
    }
    v
}

fn read_f32(b: &dyn Backend, buf: &ember_kernels::backend::DeviceBuffer, n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    b.read_f32(buf, 0, &mut out).unwrap();
    out
}

fn random_vec(n: usize, scale: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// A random matrix: its blocks and the reference's dequantized f32 `(rows, cols)`.
struct Mat {
    dtype: DType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    w: Vec<f32>,
}

fn random_mat(dtype: DType, rows: usize, blocks: usize, rng: &mut StdRng) -> Mat {
    let data: Vec<u8> = (0..rows).flat_map(|_| rows::random_row(dtype, blocks, rng)).collect();
    let w = dequantize_ref(dtype, &data);
    Mat { dtype, rows, cols: blocks * dtype.block_len(), data, w }
}

/// A random shape for `dtype`: rows not a multiple of any workgroup, a few blocks (float
/// formats: any number of columns).
fn random_shape(dtype: DType, rng: &mut StdRng) -> (usize, usize) {
    let rows = rng.gen_range(1..140);
    let blocks = match dtype.block_len() {
        1 => rng.gen_range(1..300),
        32 => rng.gen_range(1..12),
        _ => rng.gen_range(1..4),
    };
    (rows, blocks)
}

/// Blocks of a row long enough for a device's widest row kernel (more than 64 units of 32).
fn long_row_blocks(dtype: DType) -> usize {
    match dtype.block_len() {
        1 => 2100,
        32 => 70,
        _ => 9,
    }
}

fn upload_mat(b: &dyn Backend, m: &Mat) -> DeviceMat {
    b.upload_mat(MatRef::new(m.dtype, m.rows, m.cols, &m.data).unwrap()).unwrap()
}

/// Checks a product `got` of row `r` of `m` with `x` against the f64 reference.
fn check_product(name: &str, m: &Mat, r: usize, x: &[f32], got: f32, what: &str) {
    let wr = &m.w[r * m.cols..(r + 1) * m.cols];
    let want: f64 = wr.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let mut tol = PRODUCT_TOL * wr.iter().zip(x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
    if m.dtype.is_quantized() {
        let d_a: Vec<f64> = x.chunks(32).map(|b| b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)) / 127.0).collect();
        tol += ACT_Q8_SLACK * wr.iter().enumerate().map(|(j, &a)| a.abs() as f64 * d_a[j / 32]).sum::<f64>();
    }
    assert!(
        (got as f64 - want).abs() <= tol + 1e-6,
        "{name}: {what} {} {}x{} row {r}: got {got}, reference {want}, tolerance {tol:e}",
        m.dtype,
        m.rows,
        m.cols
    );
}

fn formats(b: &dyn Backend) -> impl Iterator<Item = DType> + '_ {
    DType::ALL.into_iter().filter(|&d| b.supports(d))
}

#[test]
fn matmul_matches_reference_for_every_format() {
    for (name, b) in backends() {
        for (k, dtype) in formats(&*b).enumerate() {
            let mut rng = StdRng::seed_from_u64(k as u64);
            for (case, &n) in [1usize, 1, 2, 5, 33, 70].iter().enumerate() {
                let (mut rows, mut blocks) = random_shape(dtype, &mut rng);
                if case == 0 {
                    blocks = long_row_blocks(dtype);
                }
                if case == 5 {
                    rows += 130; // past a tile of rows too
                }
                let m = random_mat(dtype, rows, blocks, &mut rng);
                let x = rows::random_x(n * m.cols, &mut rng);
                let (dm, xb) = (upload_mat(&*b, &m), b.upload_f32(&x).unwrap());
                let out = b.alloc(n * rows * 4).unwrap();
                b.matmul(&dm, &xb, n, &out).unwrap();
                let got = read_f32(&*b, &out, n * rows);
                for t in 0..n {
                    for r in 0..rows {
                        check_product(&name, &m, r, &x[t * m.cols..(t + 1) * m.cols], got[t * rows + r], &format!("matmul case {case} token {t}/{n}"));
                    }
                }
            }
        }
    }
}

#[test]
fn upload_mat_of_an_unsupported_format_is_an_error() {
    for (name, b) in backends() {
        for dtype in DType::ALL.into_iter().filter(|&d| !b.supports(d)) {
            let m = random_mat(dtype, 2, 1, &mut StdRng::seed_from_u64(1));
            let r = b.upload_mat(MatRef::new(dtype, 2, m.cols, &m.data).unwrap());
            assert!(matches!(r, Err(KernelError::Unsupported { .. })), "{name}: {dtype}: {r:?}");
        }
    }
}

/// A row list: random rows, unsorted, with repeats, `n` long.
fn random_list(rows: usize, n: usize, rng: &mut StdRng) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(0..rows as u32)).collect()
}

#[test]
fn matvec_rows_matches_reference_for_every_format() {
    for (name, b) in backends() {
        for (k, dtype) in formats(&*b).enumerate() {
            let mut rng = StdRng::seed_from_u64(100 + k as u64);
            for case in 0..4 {
                let (rows, mut blocks) = random_shape(dtype, &mut rng);
                let n = [0, 1, 7, 2 * rows + 3][case];
                if case == 2 {
                    blocks = long_row_blocks(dtype);
                }
                let m = random_mat(dtype, rows, blocks, &mut rng);
                let x = rows::random_x(m.cols, &mut rng);
                let list = random_list(rows, n, &mut rng);
                let (dm, xb) = (upload_mat(&*b, &m), b.upload_f32(&x).unwrap());
                let (lb, out) = (b.upload_u32(&list).unwrap(), b.alloc(n * 4).unwrap());
                b.matvec_rows(&dm, &lb, n, &xb, &out).unwrap();
                let got = read_f32(&*b, &out, n);
                for (k, &r) in list.iter().enumerate() {
                    check_product(&name, &m, r as usize, &x, got[k], &format!("matvec_rows case {case} entry {k}"));
                }
            }
        }
    }
}

#[test]
fn axpy_rows_matches_reference_for_every_format() {
    for (name, b) in backends() {
        for (k, dtype) in formats(&*b).enumerate() {
            let mut rng = StdRng::seed_from_u64(200 + k as u64);
            for case in 0..4 {
                let (rows, blocks) = random_shape(dtype, &mut rng);
                let m = random_mat(dtype, rows, blocks, &mut rng);
                let n = [0, 1, 9, 2 * rows + 1][case];
                let list = random_list(rows, n, &mut rng);
                let coef: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { rng.gen_range(-2.0..2.0) }).collect();
                let dm = upload_mat(&*b, &m);
                let (lb, cb) = (b.upload_u32(&list).unwrap(), b.upload_f32(&coef).unwrap());
                let out = b.upload_f32(&vec![f32::NAN; m.cols]).unwrap(); // overwritten
                b.axpy_rows(&dm, &lb, n, &cb, &out).unwrap();
                let got = read_f32(&*b, &out, m.cols);
                for (c, &g) in got.iter().enumerate() {
                    let terms = list.iter().zip(&coef).map(|(&r, &a)| a as f64 * m.w[r as usize * m.cols + c] as f64);
                    let (want, mag) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
                    let tol = PRODUCT_TOL * mag + 1e-6;
                    assert!((g as f64 - want).abs() <= tol, "{name}: axpy_rows {dtype} {rows}x{} case {case} col {c}: got {g}, reference {want}", m.cols);
                }
            }
        }
    }
}

/// A matrix larger than a storage binding (lavapipe: 128 MiB): F32 8200x4200 (138 MB), split
/// into pieces of rows by the wgpu backend; every product must cross the piece boundary.
#[test]
fn products_over_a_matrix_above_the_binding_limit() {
    let (rows, cols) = (8200, 4200);
    let mut rng = StdRng::seed_from_u64(300);
    let w: Vec<f32> = random_vec(rows * cols, 1.0, &mut rng);
    let data: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = Mat { dtype: DType::F32, rows, cols, data, w };
    let x = random_vec(cols, 1.0, &mut rng);
    for (name, b) in backends() {
        check_split_products(&name, &*b, &m, &x, &mut rng);
    }
}

/// matmul (1 and 3 tokens), matvec_rows and axpy_rows over every row of `m`.
fn check_split_products(name: &str, b: &dyn Backend, m: &Mat, x: &[f32], rng: &mut StdRng) {
    let dm = upload_mat(b, m);
    let (rows, cols) = (m.rows, m.cols);
    let x3: Vec<f32> = (0..3).flat_map(|_| x.iter().copied()).collect();
    let (xb, x3b) = (b.upload_f32(x).unwrap(), b.upload_f32(&x3).unwrap());
    let out = b.alloc(3 * rows * 4).unwrap();
    for n in [1, 3] {
        b.matmul(&dm, if n == 1 { &xb } else { &x3b }, n, &out).unwrap();
        let got = read_f32(b, &out, n * rows);
        for (i, &g) in got.iter().enumerate() {
            check_product(name, m, i % rows, x, g, &format!("split matmul {n} tokens"));
        }
    }
    let list: Vec<u32> = (0..rows as u32).rev().chain(random_list(rows, 50, rng)).collect();
    let lb = b.upload_u32(&list).unwrap();
    b.matvec_rows(&dm, &lb, list.len(), &xb, &out).unwrap();
    for (k, g) in read_f32(b, &out, list.len()).into_iter().enumerate() {
        check_product(name, m, list[k] as usize, x, g, "split matvec_rows");
    }
    let coef: Vec<f32> = (0..list.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let (cb, ob) = (b.upload_f32(&coef).unwrap(), b.alloc(cols * 4).unwrap());
    b.axpy_rows(&dm, &lb, list.len(), &cb, &ob).unwrap();
    let got = read_f32(b, &ob, cols);
    for c in (0..cols).step_by(7) {
        let terms = list.iter().zip(&coef).map(|(&r, &a)| a as f64 * m.w[r as usize * cols + c] as f64);
        let (want, mag) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
        assert!((got[c] as f64 - want).abs() <= PRODUCT_TOL * mag + 1e-6, "{name}: split axpy_rows col {c}: got {}, reference {want}", got[c]);
    }
}

/// The same split on small matrices of every format, with the wgpu backend's pieces capped to
/// a few rows.
#[cfg(feature = "wgpu")]
#[test]
fn products_over_matrices_split_in_small_pieces() {
    let Ok(mut b) = ember_kernels::backend::wgpu::WgpuBackend::new(0, false) else {
        assert!(std::env::var("EMBER_REQUIRE_WGPU").as_deref() != Ok("1"), "no wgpu adapter");
        return;
    };
    b.set_max_piece_bytes(2000);
    let mut rng = StdRng::seed_from_u64(400);
    for dtype in formats(&b).collect::<Vec<_>>() {
        let blocks = if dtype.block_len() == 1 { 100 } else { 2 };
        let m = random_mat(dtype, 45, blocks, &mut rng);
        let x = rows::random_x(m.cols, &mut rng);
        check_split_products(&format!("{} (pieces of 2000 bytes)", b.name()), &b, &m, &x, &mut rng);
        // The pieces read back as one buffer.
        let dm = upload_mat(&b, &m);
        let mut bytes = vec![0u8; m.data.len() - 3];
        b.read(&dm.buf, 3, &mut bytes).unwrap();
        assert!(bytes == m.data[3..], "{dtype}: a split matrix read back");
    }
}

/// An adapter index past the list is an error naming the adapters found.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_open_of_a_missing_adapter_names_those_found() {
    use ember_kernels::backend::wgpu::WgpuBackend;
    let e = WgpuBackend::new(99, false).err().expect("adapter 99");
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, KernelError::Device { .. }) && msg.contains("no adapter 99; found: "), "{msg}");
    let e = WgpuBackend::new(99, true).err().expect("hardware adapter 99");
    assert!(e.to_string().contains("no hardware adapter 99"), "{e}");
}

/// Memory the device cannot give is an error, and the backend goes on.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_allocation_beyond_the_device_is_an_error() {
    let Ok(b) = ember_kernels::backend::wgpu::WgpuBackend::new(0, false) else {
        assert!(std::env::var("EMBER_REQUIRE_WGPU").as_deref() != Ok("1"), "no wgpu adapter");
        return;
    };
    let base = b.allocated_bytes();
    assert!(b.alloc(1 << 44).is_err(), "{}: a 16 TiB buffer", b.name());
    let inconsistent = MatRef { dtype: DType::F32, rows: 1, cols: 1 << 30, data: &[] };
    assert!(b.upload_mat(inconsistent).is_err(), "{}: a matrix view whose bytes do not match its shape", b.name());
    assert_eq!(b.allocated_bytes(), base);
    let a = b.upload_f32(&[1.0, 2.0]).unwrap();
    assert_eq!(read_f32(&b, &a, 2), [1.0, 2.0]);
}

#[test]
fn rms_norm_matches_reference() {
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(500);
        for case in 0..12 {
            let (n_rows, dim) = (rng.gen_range(1..6), [1, 7, 64, 576, 1000, 2048][case % 6]);
            let x = random_vec(n_rows * dim, 3.0, &mut rng);
            let w = random_vec(dim, 2.0, &mut rng);
            let eps = [1e-5f32, 1e-6, 0.1][case % 3];
            let (xb, wb) = (b.upload_f32(&x).unwrap(), b.upload_f32(&w).unwrap());
            let in_place = case % 2 == 1;
            let ob = if in_place { None } else { Some(b.alloc(x.len() * 4).unwrap()) };
            b.rms_norm(&xb, &wb, n_rows, eps, ob.as_ref().unwrap_or(&xb)).unwrap();
            let got = read_f32(&*b, ob.as_ref().unwrap_or(&xb), x.len());
            for (r, row) in x.chunks(dim).enumerate() {
                let want = rms_norm_ref(row, &w, eps);
                for (i, (&g, &e)) in got[r * dim..(r + 1) * dim].iter().zip(&want).enumerate() {
                    let tol = NORM_TOL * (e.abs() as f64 + 1e-6);
                    assert!((g as f64 - e as f64).abs() <= tol, "{name}: rms_norm case {case} ({n_rows}x{dim}, in place {in_place}) [{r}][{i}]: got {g}, reference {e}");
                }
            }
        }
    }
}

#[test]
fn rope_matches_reference_in_both_pairings() {
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(600);
        for case in 0..12 {
            let (n_tokens, n_heads, head_dim) = (rng.gen_range(1..9), rng.gen_range(1..7), [2, 8, 64, 80, 128, 256][case % 6]);
            let interleaved = case % 2 == 0;
            let half = head_dim / 2;
            let x = random_vec(n_tokens * n_heads * head_dim, 2.0, &mut rng);
            let angles: Vec<f64> = (0..n_tokens * half).map(|_| rng.gen_range(-10.0..10.0)).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
            let xb = b.upload_f32(&x).unwrap();
            let (cb, sb) = (b.upload_f32(&cos).unwrap(), b.upload_f32(&sin).unwrap());
            b.rope(&xb, &cb, &sb, n_tokens, n_heads, head_dim, interleaved).unwrap();
            let got = read_f32(&*b, &xb, x.len());
            for (h, head) in x.chunks(head_dim).enumerate() {
                let t = h / n_heads;
                for i in 0..half {
                    let (a, c) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x0, x1) = (head[a] as f64, head[c] as f64);
                    let (co, si) = (cos[t * half + i] as f64, sin[t * half + i] as f64);
                    let want = [x0 * co - x1 * si, x0 * si + x1 * co];
                    let tol = ROPE_TOL * (x0.abs() + x1.abs()) + 1e-7;
                    for (j, e) in [(a, want[0]), (c, want[1])] {
                        let g = got[h * head_dim + j] as f64;
                        assert!((g - e).abs() <= tol, "{name}: rope case {case} interleaved {interleaved} head {h} elem {j}: got {g}, reference {e}");
                    }
                }
            }
        }
    }
}

/// Causal attention in f64: query `t` at position `start + t` over keys `0..=start + t`.
fn attention_ref(s: &AttnShape, n: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let hd = s.head_dim;
    let (q_dim, kv_dim, group) = (s.n_heads * hd, s.n_kv_heads * hd, s.n_heads / s.n_kv_heads);
    let mut out = vec![0.0; n * q_dim];
    for t in 0..n {
        for h in 0..s.n_heads {
            let qh = &q[t * q_dim + h * hd..][..hd];
            let off = (h / group) * hd;
            let keys = s.start + t + 1;
            let scores: Vec<f64> = (0..keys)
                .map(|j| qh.iter().zip(&k[j * kv_dim + off..][..hd]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out[t * q_dim + h * hd + d] = (0..keys).map(|j| e[j] / sum * v[j * kv_dim + off + d] as f64).sum();
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference_with_grouped_heads_and_offsets() {
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(700);
        for case in 0..12 {
            let (mut n_kv_heads, mut group) = ([1, 2, 4][case % 3], [1, 2, 3][case % 3]);
            let head_dim = [64, 8, 80, 128, 256, 6][case % 6];
            let mut start = [0, 1, 63, 64, 150][rng.gen_range(0..5)];
            let n = [1, 2, 7, 70][case % 4];
            if case == 8 {
                (n_kv_heads, group, start) = (8, 4, 1000); // decode over a long cache
            }
            let s = AttnShape { n_heads: n_kv_heads * group, n_kv_heads, head_dim, start };
            let ctx = start + n + 3;
            let (q_dim, kv_dim) = (s.n_heads * head_dim, n_kv_heads * head_dim);
            let q = random_vec(n * q_dim, 2.0, &mut rng);
            let k = random_vec(ctx * kv_dim, 2.0, &mut rng);
            let v = random_vec(ctx * kv_dim, 1.0, &mut rng);
            let (qb, kb, vb) = (b.upload_f32(&q).unwrap(), b.upload_f32(&k).unwrap(), b.upload_f32(&v).unwrap());
            let ob = b.alloc(q.len() * 4).unwrap();
            b.attention(&s, n, &qb, &kb, &vb, &ob).unwrap();
            let got = read_f32(&*b, &ob, q.len());
            let want = attention_ref(&s, n, &q, &k, &v);
            for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                assert!((g as f64 - e).abs() <= ATTENTION_TOL, "{name}: attention case {case} {s:?} n {n}: out[{i}] = {g}, reference {e}");
            }
        }
    }
}

fn glu_ref(act: GluAct, x: f64) -> f64 {
    match act {
        GluAct::Silu => x / (1.0 + (-x).exp()),
        GluAct::Relu => x.max(0.0),
        GluAct::Gelu => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
    }
}

#[test]
fn elementwise_ops_match_reference() {
    let ops = [
        Elementwise::Add,
        Elementwise::AddRow { width: 37 },
        Elementwise::Glu(GluAct::Silu),
        Elementwise::Glu(GluAct::Relu),
        Elementwise::Glu(GluAct::Gelu),
    ];
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(800);
        for op in ops {
            for n in [1, 255, 257, 37 * 11, 70_001] {
                let a = random_vec(n + 5, 12.0, &mut rng);
                let bv = random_vec(n.max(37), 3.0, &mut rng);
                let (ab, bb) = (b.upload_f32(&a).unwrap(), b.upload_f32(&bv).unwrap());
                b.elementwise(op, &ab, &bb, n).unwrap();
                let got = read_f32(&*b, &ab, n + 5);
                for i in 0..n + 5 {
                    let (x, y) = (a[i] as f64, bv.get(i).copied().unwrap_or(0.0) as f64);
                    let want = match op {
                        _ if i >= n => x, // past n: untouched
                        Elementwise::Add => x + y,
                        Elementwise::AddRow { width } => x + bv[i % width] as f64,
                        Elementwise::Glu(act) => glu_ref(act, x) * y,
                    };
                    let tol = ELEMENTWISE_TOL * (1.0 + want.abs());
                    assert!((got[i] as f64 - want).abs() <= tol, "{name}: {op:?} n {n} [{i}]: got {}, reference {want}", got[i]);
                }
            }
        }
    }
}

/// Hundreds of ops queued without a wait, each with its own parameters (past the wgpu backend's
/// parameter ring and its automatic submissions), interleaved with writes.
#[test]
fn a_long_queue_of_ops_keeps_each_ops_parameters() {
    for (name, b) in backends() {
        let n_max = 1000;
        let a = b.alloc(n_max * 4).unwrap();
        let ones = b.upload_f32(&vec![1.0; n_max]).unwrap();
        let mut want = vec![0.0f32; n_max];
        for i in 0..700 {
            let n = (i * 37) % n_max + 1;
            b.elementwise(Elementwise::Add, &a, &ones, n).unwrap();
            want[..n].iter_mut().for_each(|v| *v += 1.0);
            if i % 150 == 149 {
                b.write_f32(&a, 0, &[-1.0]).unwrap();
                want[0] = -1.0;
            }
        }
        assert_eq!(read_f32(&*b, &a, n_max), want, "{name}");
    }
}

#[test]
fn copy_write_and_read_move_the_right_elements() {
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(900);
        let src = random_vec(1000, 1.0, &mut rng);
        let dst0 = random_vec(800, 1.0, &mut rng);
        let (sb, db) = (b.upload_f32(&src).unwrap(), b.upload_f32(&dst0).unwrap());
        // Between buffers, at offsets.
        b.copy(&sb, 17, &db, 301, 400).unwrap();
        let mut want = dst0.clone();
        want[301..701].copy_from_slice(&src[17..417]);
        assert_eq!(read_f32(&*b, &db, 800), want, "{name}: copy between buffers");
        // Within one buffer: apart, then overlapping both ways (memmove).
        let mut mirror = src.clone();
        for (from, to, n) in [(0, 500, 300), (100, 150, 200), (300, 250, 400)] {
            b.copy(&sb, from, &sb, to, n).unwrap();
            mirror.copy_within(from..from + n, to);
            assert_eq!(read_f32(&*b, &sb, 1000), mirror, "{name}: copy within a buffer {from} -> {to} ({n})");
        }
        // Writes of any length at offsets that are multiples of 4, reads at any offset.
        let mut bytes: Vec<u8> = (0..=255u8).cycle().take(999).collect();
        let buf = b.upload(&bytes).unwrap();
        for (off, len) in [(0, 3), (8, 5), (400, 1), (900, 99), (996, 3)] {
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            b.write(&buf, off, &data).unwrap();
            bytes[off..off + len].copy_from_slice(&data);
        }
        for (off, len) in [(0, 999), (1, 3), (7, 100), (998, 1), (500, 0)] {
            let mut out = vec![0u8; len];
            b.read(&buf, off, &mut out).unwrap();
            assert_eq!(out, bytes[off..off + len], "{name}: read {len} bytes at {off}");
        }
        b.flush().unwrap();
        b.synchronize().unwrap();
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for (name, b) in backends() {
        let m = random_mat(DType::Q4_0, 10, 2, &mut StdRng::seed_from_u64(1000));
        let dm = upload_mat(&*b, &m);
        let x = b.upload_f32(&vec![1.0; m.cols]).unwrap();
        let out = b.alloc(40 * 4).unwrap();
        // A row index out of range: at once, or (devices holding the list) at the next wait.
        let bad = b.upload_u32(&[3, 10, 2]).unwrap();
        let r = b.matvec_rows(&dm, &bad, 3, &x, &out).and_then(|_| b.synchronize());
        assert!(matches!(r, Err(KernelError::Shape { .. })), "{name}: matvec_rows with row 10 of 10: {r:?}");
        let r = b.axpy_rows(&dm, &bad, 3, &x, &out).and_then(|_| b.synchronize());
        assert!(matches!(r, Err(KernelError::Shape { .. })), "{name}: axpy_rows with row 10 of 10: {r:?}");
        // The backend works on after the error.
        let good = b.upload_u32(&[9, 0]).unwrap();
        b.matvec_rows(&dm, &good, 2, &x, &out).unwrap();
        let got = read_f32(&*b, &out, 2);
        check_product(&name, &m, 9, &vec![1.0; m.cols], got[0], "matvec_rows after an error");
        // Short buffers.
        let short = b.alloc(m.cols * 4 - 4).unwrap();
        assert!(b.matmul(&dm, &short, 1, &out).is_err(), "{name}: matmul with a short x");
        assert!(b.matmul(&dm, &x, 2, &out).is_err(), "{name}: matmul with x short of 2 tokens");
        assert!(b.rms_norm(&short, &x, 2, 1e-5, &out).is_err(), "{name}: rms_norm with a short x");
        assert!(b.matvec_rows(&dm, &good, 3, &x, &out).is_err(), "{name}: matvec_rows with a short row list");
        assert!(b.elementwise(Elementwise::Add, &x, &short, m.cols).is_err(), "{name}: elementwise with a short b");
        assert!(b.copy(&x, 1, &short, 0, m.cols).is_err(), "{name}: copy past the source");
        assert!(b.read(&x, 1, &mut vec![0u8; m.cols * 4]).is_err(), "{name}: read past the end");
        assert!(b.write(&x, 4, &vec![0u8; m.cols * 4]).is_err(), "{name}: write past the end");
        let s = AttnShape { n_heads: 3, n_kv_heads: 2, head_dim: 8, start: 0 };
        assert!(b.attention(&s, 1, &x, &x, &x, &out).is_err(), "{name}: attention with 3 heads over 2 KV heads");
        let s = AttnShape { n_heads: 2, n_kv_heads: 2, head_dim: 8, start: 100 };
        assert!(b.attention(&s, 1, &x, &x, &x, &out).is_err(), "{name}: attention over a cache shorter than start + n");
        // A matrix whose bytes do not match its shape.
        let wrong = DeviceMat { dtype: DType::Q4_0, rows: 11, cols: m.cols, buf: b.upload(&m.data).unwrap() };
        assert!(b.matmul(&wrong, &x, 1, &out).is_err(), "{name}: matmul with a matrix short of a row");
        b.synchronize().unwrap();
    }
}

#[test]
fn allocated_bytes_count_buffers_until_dropped() {
    for (name, b) in backends() {
        let base = b.allocated_bytes();
        eprintln!("{name}: {base} bytes held before any buffer");
        let a = b.alloc(1001).unwrap();
        let after_alloc = b.allocated_bytes();
        assert!(after_alloc >= base + 1001, "{name}: alloc of 1001 bytes: {base} -> {after_alloc}");
        let m = random_mat(DType::Q8_0, 64, 4, &mut StdRng::seed_from_u64(1100));
        let dm = upload_mat(&*b, &m);
        let after_mat = b.allocated_bytes();
        assert!(after_mat >= after_alloc + m.data.len(), "{name}: a {}-byte matrix: {after_alloc} -> {after_mat}", m.data.len());
        // Ops and reads may use internal buffers, but those are counted from the start.
        let x = b.upload_f32(&vec![0.5; m.cols]).unwrap();
        let out = b.alloc(64 * 4).unwrap();
        b.matmul(&dm, &x, 1, &out).unwrap();
        read_f32(&*b, &out, 64);
        drop((x, out));
        assert_eq!(b.allocated_bytes(), after_mat, "{name}: after an op and a read");
        drop(dm);
        assert_eq!(b.allocated_bytes(), after_alloc, "{name}: after dropping the matrix");
        drop(a);
        assert_eq!(b.allocated_bytes(), base, "{name}: after dropping everything");
    }
}

/// Decode-shape products timed on each backend (not a check): `cargo test --release -p
/// ember-kernels --features wgpu --test backend -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_decode_matvec() {
    for (name, b) in backends() {
        let mut rng = StdRng::seed_from_u64(1200);
        for (dtype, rows, cols) in [(DType::Q4_1, 576, 1536), (DType::Q4_1, 1536, 576), (DType::Q4_0, 4096, 11008), (DType::Q8_0, 4096, 11008), (DType::F32, 4096, 11008), (DType::Q4_K, 4096, 11008), (DType::Q6_K, 4096, 11008)] {
            let m = random_mat(dtype, rows, cols / dtype.block_len(), &mut rng);
            let dm = upload_mat(&*b, &m);
            let x = b.upload_f32(&rows::random_x(cols, &mut rng)).unwrap();
            let out = b.alloc(rows * 4).unwrap();
            b.matmul(&dm, &x, 1, &out).unwrap();
            b.synchronize().unwrap();
            let calls = 20;
            let t = std::time::Instant::now();
            for _ in 0..calls {
                b.matmul(&dm, &x, 1, &out).unwrap();
            }
            b.synchronize().unwrap();
            let queued = t.elapsed().as_secs_f64() * 1e3 / calls as f64;
            let t = std::time::Instant::now();
            for _ in 0..calls {
                b.matmul(&dm, &x, 1, &out).unwrap();
                read_f32(&*b, &out, rows);
            }
            let read_each = t.elapsed().as_secs_f64() * 1e3 / calls as f64;
            println!("{name}: matvec {dtype} {rows}x{cols}: {queued:.3} ms per call queued, {read_each:.3} ms with a read after each");
            if rows > 1000 && dtype != DType::Q4_0 {
                continue;
            }
            let n = 64;
            let xn = b.upload_f32(&rows::random_x(n * cols, &mut rng)).unwrap();
            let outn = b.alloc(n * rows * 4).unwrap();
            b.matmul(&dm, &xn, n, &outn).unwrap();
            b.synchronize().unwrap();
            let t = std::time::Instant::now();
            b.matmul(&dm, &xn, n, &outn).unwrap();
            b.synchronize().unwrap();
            println!("{name}: matmul {dtype} {rows}x{cols}, {n} tokens: {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
}

#[test]
#[ignore]
fn time_small_ops() {
    for (name, b) in backends() {
        let a = b.upload_f32(&[1.0; 1024]).unwrap();
        let c = b.upload_f32(&[1.0; 1024]).unwrap();
        b.elementwise(Elementwise::Add, &a, &c, 1024).unwrap();
        b.synchronize().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..200 {
            b.elementwise(Elementwise::Add, &a, &c, 1024).unwrap();
        }
        b.synchronize().unwrap();
        println!("{name}: elementwise 1024: {:.3} ms per op", t.elapsed().as_secs_f64() * 1e3 / 200.0);
        let t = std::time::Instant::now();
        for _ in 0..50 {
            b.elementwise(Elementwise::Add, &a, &c, 1024).unwrap();
            b.synchronize().unwrap();
        }
        println!("{name}: elementwise 1024 + synchronize: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
        // Decode attention, SmolLM2's shape (9 heads on 3 KV heads of 64) over 2048 keys.
        let s = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64, start: 2047 };
        let mut rng = StdRng::seed_from_u64(1300);
        let q = b.upload_f32(&random_vec(9 * 64, 1.0, &mut rng)).unwrap();
        let k = b.upload_f32(&random_vec(2048 * 3 * 64, 1.0, &mut rng)).unwrap();
        let v = b.upload_f32(&random_vec(2048 * 3 * 64, 1.0, &mut rng)).unwrap();
        let o = b.alloc(9 * 64 * 4).unwrap();
        b.attention(&s, 1, &q, &k, &v, &o).unwrap();
        b.synchronize().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            b.attention(&s, 1, &q, &k, &v, &o).unwrap();
        }
        b.synchronize().unwrap();
        println!("{name}: decode attention 9/3 heads of 64 over 2048 keys: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
    }
}
