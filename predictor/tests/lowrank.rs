//! The low-rank activation predictor (`ember_predictor::lowrank`) against independent references:
//! - learnability: a hidden linear "teacher" whose directions lie in a rank-8 subspace decides the
//!   active sets; a trained, calibrated predictor must find most of them on unseen rows;
//! - the 8-bit forward against a naive f64 forward of the weights dequantized from `to_tensors`;
//! - serialization: in memory and through a real safetensors file, and the errors that name the
//!   faulty tensor;
//! - bad inputs give `Param` errors; the training loss goes down; training is deterministic.

use std::collections::HashMap;
use std::path::Path;

use ember_predictor::lowrank::{train, Dataset, LowRankPredictor, PredictKernel, PredictScratch, TensorData, TrainConfig};
use ember_predictor::PredictorError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;

/// Dimension of the subspace the teacher's directions live in.
const SUBSPACE: usize = 8;
/// Teacher biases: Φ(0.2533) = 0.60 for every 8th neuron, Φ(−1.6449) = 0.05 for the others
/// (the teacher's pre-activation `a_j·x` is N(0, 1) since `a_j` is a unit vector).
const C_COMMON: f32 = 0.2533;
const C_RARE: f32 = -1.6449;
/// The recall the threshold is calibrated for on held-out rows.
const TARGET_RECALL: f32 = 0.95;
/// On a third, unseen set the recall may fall a little below the calibrated 0.95 (sampling
/// noise of a 1000-row calibration set, and the calibrated cut sits at the edge), but not far.
const MIN_TEST_RECALL: f32 = 0.9;
/// The teacher is linear in an 8-dim projection, which a rank-16 relu bottleneck can represent
/// exactly, so at 95 % recall the extra predictions must stay few: at most 2.5× the truly
/// active neurons (an untrained one at 95 % recall predicts ≈ 7.4× on this data).
const MAX_PREDICTED_OVER_ACTIVE: f32 = 2.5;
/// The 8-bit forward sums in f32 in another order than the f64 reference: relative error
/// ≈ dim · 6e-8 ≈ 2e-6; 1e-4 of max(1, |logit|) leaves a wide margin and still catches any
/// wrong scale, bias, relu or index (those move logits by ≥ 1e-2). On top of it comes the
/// 7-bit quantization of the hidden vector, bounded per logit (see `hidden_rounding_bound`).
const LOGIT_TOL: f64 = 1e-4;
/// The hidden vector is rounded to multiples of `max(hidden) / 127`: each value moves by at
/// most half a step.
const HIDDEN_LEVELS: f64 = 127.0;
const PREFIX: &str = "blk.3.ffn_pred.";

fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = 1.0 - rng.gen::<f32>();
    let u2: f32 = rng.gen::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Hidden ground truth: neuron `j` is active when `a_j · x + c_j > 0`, `a_j = B u_j / |B u_j|`.
struct Teacher {
    dim: usize,
    n_out: usize,
    a: Vec<f32>, // (n_out, dim)
    c: Vec<f32>, // (n_out)
}

impl Teacher {
    fn new(dim: usize, n_out: usize, seed: u64) -> Teacher {
        let mut rng = StdRng::seed_from_u64(seed);
        let basis: Vec<f32> = (0..dim * SUBSPACE).map(|_| normal(&mut rng)).collect(); // (dim, SUBSPACE)
        let mut a = Vec::with_capacity(n_out * dim);
        for _ in 0..n_out {
            let u: Vec<f32> = (0..SUBSPACE).map(|_| normal(&mut rng)).collect(); // (SUBSPACE)
            let row: Vec<f32> =
                (0..dim).map(|k| (0..SUBSPACE).map(|s| basis[k * SUBSPACE + s] * u[s]).sum()).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            a.extend(row.iter().map(|v| v / norm));
        }
        let c = (0..n_out).map(|j| if j % 8 == 0 { C_COMMON } else { C_RARE }).collect();
        Teacher { dim, n_out, a, c }
    }

    /// `n` rows with x ~ N(0, I) and the teacher's active sets.
    fn sample(&self, n: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Dataset::new(self.dim, self.n_out);
        for _ in 0..n {
            let x: Vec<f32> = (0..self.dim).map(|_| normal(&mut rng)).collect();
            let active = (0..self.n_out).filter(|&j| {
                let a = &self.a[j * self.dim..(j + 1) * self.dim];
                a.iter().zip(&x).map(|(a, x)| a * x).sum::<f32>() + self.c[j] > 0.0
            });
            data.push(&x, active).expect("valid row");
        }
        data
    }
}

fn quiet() -> impl FnMut(usize, usize, f32) {
    |_, _, _| {}
}

/// A small trained and calibrated predictor with dims that are not multiples of 8 or 64.
fn small_predictor() -> (LowRankPredictor, Dataset) {
    let teacher = Teacher::new(37, 70, 11);
    let data = teacher.sample(600, 12);
    let cfg = TrainConfig { rank: 5, epochs: 3, batch: 32, lr: 3e-3, ..TrainConfig::default() };
    let mut p = train(&data, &cfg, &mut quiet()).expect("train");
    p.calibrate(&data, 0.9).expect("calibrate");
    (p, data)
}

fn tensor_map(p: &LowRankPredictor) -> HashMap<String, TensorData> {
    p.to_tensors()
        .into_iter()
        .map(|(name, dt, shape, bytes)| (format!("{PREFIX}{name}"), (dt, shape, bytes)))
        .collect()
}

fn load(map: &HashMap<String, TensorData>) -> Result<LowRankPredictor, PredictorError> {
    LowRankPredictor::from_tensors(Path::new("pred.safetensors"), PREFIX, &|name| map.get(name).cloned())
}

#[test]
fn learns_a_low_rank_teacher() {
    let teacher = Teacher::new(64, 256, 1);
    let data = teacher.sample(4000, 2);
    let (train_set, val) = data.split(0.25);
    let test = teacher.sample(2000, 3);
    let cfg = TrainConfig { rank: 16, epochs: 20, batch: 64, lr: 3e-3, pos_weight: 4.0, seed: 7 };
    let mut p = train(&train_set, &cfg, &mut quiet()).expect("train");
    p.calibrate(&val, TARGET_RECALL).expect("calibrate");
    let m = p.evaluate(&test).expect("evaluate");
    eprintln!("teacher: {m:?}, {} bytes, {} flops", p.bytes(), p.flops());
    assert!((m.active_fraction - test.active_fraction()).abs() < 1e-6);
    assert!(m.recall >= MIN_TEST_RECALL, "recall {} < {MIN_TEST_RECALL}", m.recall);
    let limit = MAX_PREDICTED_OVER_ACTIVE * m.active_fraction;
    assert!(m.predicted_fraction <= limit, "predicted {} > {limit}", m.predicted_fraction);
}

#[test]
fn calibrate_picks_the_largest_cut_reaching_the_target() {
    let (mut p, data) = small_predictor();
    for target in [0.5, 0.8, 0.95, 1.0] {
        p.calibrate(&data, target).expect("calibrate");
        let at = p.evaluate(&data).expect("evaluate").recall;
        assert!(at >= target, "recall {at} below target {target}");
        let cut = p.threshold;
        p.threshold = cut.next_up();
        let above = p.evaluate(&data).expect("evaluate").recall;
        assert!(above < target, "a higher cut {} still reaches {target} ({above})", p.threshold);
        p.threshold = cut;
    }
}

/// Naive f64 forward of the dequantized tensors, `W2 · relu(W1 · x + b1) + b2`, and per logit
/// the most the 7-bit rounding of the hidden vector can move it:
/// `(max(hidden) / 127 / 2) · Σ_r |W2[j][r]|`.
fn reference_logits(t: &HashMap<String, TensorData>, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let f32s = |name: &str| -> Vec<f64> {
        let b = &t[&format!("{PREFIX}{name}")].2;
        b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
    };
    let i8s = |name: &str| -> (Vec<usize>, Vec<f64>) {
        let (_, shape, b) = &t[&format!("{PREFIX}{name}")];
        (shape.clone(), b.iter().map(|&v| f64::from(v as i8)).collect())
    };
    let ((s1, q1), (s2, q2)) = (i8s("w1.q"), i8s("w2.q"));
    let (scale1, b1, scale2, b2) = (f32s("w1.scale"), f32s("b1"), f32s("w2.scale"), f32s("b2"));
    let (rank, dim, n_out) = (s1[0], s1[1], s2[0]);
    let h: Vec<f64> = (0..rank)
        .map(|r| {
            let s: f64 = (0..dim).map(|k| q1[r * dim + k] * scale1[r] * f64::from(x[k])).sum();
            (s + b1[r]).max(0.0)
        })
        .collect();
    let half_step = h.iter().fold(0.0f64, |m, &v| m.max(v)) / HIDDEN_LEVELS / 2.0;
    let logits = (0..n_out).map(|j| b2[j] + (0..rank).map(|r| q2[j * rank + r] * scale2[j] * h[r]).sum::<f64>());
    let bound = (0..n_out).map(|j| half_step * (0..rank).map(|r| (q2[j * rank + r] * scale2[j]).abs()).sum::<f64>());
    (logits.collect(), bound.collect())
}

/// Every second-stage kernel of this CPU on `p` and `x`: logits within the bound of the
/// reference, the same logits and indices bit for bit as the portable body, the indices those
/// over the threshold.
fn check_forward(p: &LowRankPredictor, tensors: &HashMap<String, TensorData>, x: &[f32], what: &str) {
    let (want, bound) = reference_logits(tensors, x);
    let (mut portable, mut first) = (PredictScratch::default(), Vec::new());
    p.predict_with(PredictKernel::Portable, x, &mut portable, &mut first);
    for kernel in PredictKernel::detected() {
        let (mut scratch, mut out) = (PredictScratch::default(), Vec::new());
        p.predict_with(kernel, x, &mut scratch, &mut out);
        let logits = scratch.logits();
        assert_eq!(logits.len(), want.len());
        for (j, (&got, &want)) in logits.iter().zip(&want).enumerate() {
            let tol = LOGIT_TOL * want.abs().max(1.0) + bound[j];
            assert!((f64::from(got) - want).abs() <= tol, "{what} {kernel:?} logit {j}: {got} vs {want} (tolerance {tol})");
            let over = out.binary_search(&(j as u32)).is_ok();
            assert_eq!(over, got > p.threshold, "{what} {kernel:?} neuron {j}: logit {got}, threshold {}", p.threshold);
        }
        assert!(out.windows(2).all(|w| w[0] < w[1]), "{what} {kernel:?}: out not sorted");
        let same = logits.iter().zip(portable.logits()).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && out == first, "{what}: {kernel:?} differs from the portable body");
    }
}

#[test]
fn quantized_forward_matches_naive_dequantized_reference() {
    let (p, data) = small_predictor();
    let tensors = tensor_map(&p);
    let mut rng = StdRng::seed_from_u64(5);
    let random: Vec<Vec<f32>> = (0..50).map(|_| (0..37).map(|_| 3.0 * normal(&mut rng)).collect()).collect();
    let rows = (0..data.len()).step_by(7).map(|i| data.row(i).to_vec()).chain(random);
    for (i, x) in rows.enumerate() {
        check_forward(&p, &tensors, &x, &format!("row {i}"));
    }
}

/// A predictor of random 8-bit weights with the given shape, threshold at 0.
fn random_predictor(dim: usize, rank: usize, n_out: usize, seed: u64) -> HashMap<String, TensorData> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut i8s = |n: usize| (0..n).map(|_| rng.gen_range(-127i8..=127) as u8).collect::<Vec<u8>>();
    let (w1, w2) = (i8s(rank * dim), i8s(n_out * rank));
    let f32s = |v: Vec<f32>| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut floats = |n: usize, scale: f32, shift: f32| f32s((0..n).map(|_| shift + scale * normal(&mut rng)).collect());
    let t = |dt, shape: Vec<usize>, bytes| (dt, shape, bytes);
    [
        ("w1.q", t(Dtype::I8, vec![rank, dim], w1)),
        ("w1.scale", t(Dtype::F32, vec![rank], floats(rank, 0.001, 0.01))),
        ("b1", t(Dtype::F32, vec![rank], floats(rank, 0.5, 0.2))),
        ("w2.q", t(Dtype::I8, vec![n_out, rank], w2)),
        ("w2.scale", t(Dtype::F32, vec![n_out], floats(n_out, 0.001, 0.01))),
        ("b2", t(Dtype::F32, vec![n_out], floats(n_out, 1.0, 0.0))),
        ("threshold", t(Dtype::F32, vec![1], f32s(vec![0.0]))),
    ]
    .into_iter()
    .map(|(name, v)| (format!("{PREFIX}{name}"), v))
    .collect()
}

/// Shapes around the second stage's blocks (16 outputs × 4 ranks, four blocks per pass):
/// ranks and output counts on, below and past the multiples, up to a real layer's.
#[test]
fn every_kernel_matches_the_reference_over_many_shapes() {
    let shapes = [(8, 1, 1), (5, 3, 15), (16, 4, 16), (9, 7, 17), (33, 64, 64), (40, 65, 79), (64, 66, 130), (24, 67, 250), (576, 64, 1536)];
    for (s, &(dim, rank, n_out)) in shapes.iter().enumerate() {
        let tensors = random_predictor(dim, rank, n_out, 100 + s as u64);
        let p = load(&tensors).expect("random predictor");
        let mut rng = StdRng::seed_from_u64(200 + s as u64);
        for i in 0..8 {
            let x: Vec<f32> = (0..dim).map(|_| 2.0 * normal(&mut rng)).collect();
            check_forward(&p, &tensors, &x, &format!("{dim}x{rank}x{n_out} row {i}"));
        }
    }
}

#[test]
fn tensors_round_trip_in_memory_and_through_a_file() {
    let (p, data) = small_predictor();
    let map = tensor_map(&p);
    let loaded = load(&map).expect("from_tensors");
    assert_eq!(loaded, p);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pred.safetensors");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = map
        .iter()
        .map(|(name, (dt, shape, bytes))| {
            (name.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).expect("view"))
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &path).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let get = |name: &str| file.tensor(name).ok().map(|t| (t.dtype(), t.shape().to_vec(), t.data().to_vec()));
    let from_file = LowRankPredictor::from_tensors(&path, PREFIX, &get).expect("from file");
    let (mut s1, mut s2, mut a, mut b) = (PredictScratch::default(), PredictScratch::default(), Vec::new(), Vec::new());
    for i in 0..data.len() {
        p.predict(data.row(i), &mut s1, &mut a);
        from_file.predict(data.row(i), &mut s2, &mut b);
        assert_eq!(a, b, "row {i}");
        assert!(s1.logits().iter().zip(s2.logits()).all(|(x, y)| x.to_bits() == y.to_bits()), "row {i} logits");
    }
}

/// `from_tensors` on `map` after `edit` must fail with a File error naming `tensor`.
fn assert_file_error(
    map: &HashMap<String, TensorData>,
    tensor: &str,
    edit: impl FnOnce(&mut HashMap<String, TensorData>),
) {
    let mut map = map.clone();
    edit(&mut map);
    match load(&map) {
        Err(PredictorError::File { field, problem, .. }) => {
            assert_eq!(field, format!("{PREFIX}{tensor}"), "{problem}")
        }
        other => panic!("{tensor}: expected a File error, got {other:?}"),
    }
}

#[test]
fn from_tensors_names_the_faulty_tensor() {
    let (p, _) = small_predictor();
    let map = tensor_map(&p);
    let key = |s: &str| format!("{PREFIX}{s}");
    for name in ["w1.q", "w1.scale", "b1", "w2.q", "w2.scale", "b2", "threshold"] {
        assert_file_error(&map, name, |m| drop(m.remove(&key(name))));
    }
    assert_file_error(&map, "w2.scale", |m| {
        let t = m.get_mut(&key("w2.scale")).expect("present");
        t.1[0] += 1;
        t.2.extend([0; 4]);
    });
    assert_file_error(&map, "w2.q", |m| {
        let t = m.get_mut(&key("w2.q")).expect("present");
        t.1 = vec![t.1[0] * t.1[1]]; // 1-D
    });
    assert_file_error(&map, "w2.q", |m| {
        let t = m.get_mut(&key("w2.q")).expect("present");
        t.1 = vec![t.1[0] / 5, t.1[1] * 5]; // rank no longer matches W1
    });
    assert_file_error(&map, "b1", |m| m.get_mut(&key("b1")).expect("present").0 = Dtype::F16);
    assert_file_error(&map, "w1.q", |m| {
        m.get_mut(&key("w1.q")).expect("present").2.pop();
    });
    assert_file_error(&map, "b2", |m| {
        m.get_mut(&key("b2")).expect("present").2[..4].copy_from_slice(&f32::NAN.to_le_bytes())
    });
}

fn expect_param(r: Result<impl std::fmt::Debug, PredictorError>, name: &str) {
    match r {
        Err(PredictorError::Param { name: got, .. }) => assert_eq!(got, name),
        other => panic!("expected a Param error on {name}, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let teacher = Teacher::new(16, 20, 3);
    let data = teacher.sample(50, 4);
    let ok = TrainConfig { rank: 4, epochs: 1, ..TrainConfig::default() };
    let run = |d: &Dataset, cfg: &TrainConfig| train(d, cfg, &mut quiet());
    expect_param(run(&data, &TrainConfig { rank: 0, ..ok.clone() }), "rank");
    expect_param(run(&data, &TrainConfig { rank: usize::MAX / 4, ..ok.clone() }), "rank");
    expect_param(run(&data, &TrainConfig { epochs: 0, ..ok.clone() }), "epochs");
    expect_param(run(&data, &TrainConfig { batch: 0, ..ok.clone() }), "batch");
    expect_param(run(&data, &TrainConfig { lr: f32::NAN, ..ok.clone() }), "lr");
    expect_param(run(&data, &TrainConfig { pos_weight: -1.0, ..ok.clone() }), "pos_weight");
    expect_param(run(&Dataset::new(16, 20), &ok), "data");
    let mut broken = data.clone();
    broken.x.pop(); // public fields that disagree
    expect_param(run(&broken, &ok), "data");

    let mut d = Dataset::new(16, 20);
    expect_param(d.push(&[0.0; 15], [1]), "x");
    expect_param(d.push(&[f32::INFINITY; 16], [1]), "x");
    expect_param(d.push(&[0.0; 16], [3, 20]), "active");
    assert!(d.is_empty(), "a failed push must leave the dataset unchanged");

    let mut p = run(&data, &ok).expect("train");
    for target in [0.0, 1.5, f32::NAN] {
        expect_param(p.calibrate(&data, target), "target_recall");
    }
    let mut none_active = Dataset::new(16, 20);
    none_active.push(&[0.5; 16], []).expect("push");
    expect_param(p.calibrate(&none_active, 0.9), "val");
    expect_param(p.calibrate(&Dataset::new(17, 20), 0.9), "val");
    expect_param(p.evaluate(&Teacher::new(16, 21, 3).sample(5, 1)), "data");
}

#[test]
fn training_loss_goes_down() {
    let data = Teacher::new(32, 96, 21).sample(800, 22);
    let cfg = TrainConfig { rank: 8, epochs: 6, batch: 32, lr: 3e-3, ..TrainConfig::default() };
    let mut seen = Vec::new();
    train(&data, &cfg, &mut |epoch, epochs, loss| seen.push((epoch, epochs, loss))).expect("train");
    let epochs: Vec<usize> = seen.iter().map(|s| s.0).collect();
    assert_eq!(epochs, (1..=cfg.epochs).collect::<Vec<_>>());
    assert!(seen.iter().all(|s| s.1 == cfg.epochs && s.2.is_finite() && s.2 > 0.0), "{seen:?}");
    let (first, last) = (seen[0].2, seen[seen.len() - 1].2);
    assert!(last < first, "loss did not go down: {seen:?}");
}

#[test]
fn training_is_deterministic_per_seed() {
    let data = Teacher::new(24, 40, 31).sample(300, 32);
    let cfg = TrainConfig { rank: 6, epochs: 2, batch: 50, ..TrainConfig::default() };
    let a = train(&data, &cfg, &mut quiet()).expect("train");
    let b = train(&data, &cfg, &mut quiet()).expect("train");
    let c = train(&data, &TrainConfig { seed: 1, ..cfg }, &mut quiet()).expect("train");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.flops(), 6 * 24 + 40 * 6);
    // i8 weights, f32 scales and biases (2 per row of W1 and of W2), the threshold.
    assert_eq!(a.bytes(), 6 * 24 + 40 * 6 + 4 * (2 * 6 + 2 * 40 + 1));
}

#[test]
fn dataset_split_and_active_fraction() {
    let data = Teacher::new(10, 130, 41).sample(41, 42);
    let ones: usize = (0..data.len()).map(|i| (0..130).filter(|&j| data.is_active(i, j)).count()).sum();
    let naive = ones as f32 / (41.0 * 130.0);
    assert!((data.active_fraction() - naive).abs() < 1e-6);
    let (kept, held) = data.split(0.25);
    assert_eq!((kept.len(), held.len()), (31, 10)); // round(41 · 0.25) = 10 held out
    assert_eq!(held.row(0), data.row(31));
    assert!((0..130).all(|j| held.is_active(9, j) == data.is_active(40, j)));
    assert_eq!(data.split(f32::NAN).1.len(), 0);
    assert_eq!(data.split(2.0).1.len(), 41);
}

/// A SmolLM2-135M-sized layer (dim 576, 1536 FFN neurons) at rank 64 on 8000 rows, 10 epochs.
/// Run by hand: `cargo test -p ember-predictor --release -- --ignored --nocapture`.
#[test]
#[ignore = "timing, ~15 s (6 s of it training)"]
fn train_speed_smollm_layer() {
    let teacher = Teacher::new(576, 1536, 51);
    let data = teacher.sample(8000, 52);
    let start = std::time::Instant::now();
    let mut log = |e: usize, n: usize, loss: f32| eprintln!("epoch {e}/{n}: loss {loss:.4}");
    let p = train(&data, &TrainConfig::default(), &mut log).expect("train");
    eprintln!(
        "trained in {:.1} s: {} bytes, {} flops/token",
        start.elapsed().as_secs_f32(),
        p.bytes(),
        p.flops()
    );
}
