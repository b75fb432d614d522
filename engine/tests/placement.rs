//! The placement planner: pure and fast. Hand-made footprints shaped like SmolLM2-135M (Q4_1
//! matrices, Q8_0 tied output) and like an odd-sized model whose rows are not multiples of 4
//! bytes (padding), synthetic power-law neuron frequencies (a few hot neurons, a long cold
//! tail, as profiles of real models show), and the real default model when `EMBER_TEST_MODEL`
//! is set.
//!
//! Properties: a plan never exceeds its budget, and its byte count is exactly the sum of its
//! parts' buffers; more budget never covers less; a budget for the whole model puts everything on
//! the GPU; layers mode is a prefix of whole layers; greedy stays within a small, stated gap of
//! its upper bound (an LP relaxation).

use ember_engine::placement::{
    parse_size, Budget, Device, Footprint, Hardware, LayerFootprint, Link, Offload, Part, Placement,
};

/// Q4_1 bytes of a (rows, cols) matrix.
fn q4_1(rows: u64, cols: u64) -> u64 {
    rows * cols / 32 * 20
}

/// SmolLM2-135M's shapes: 30 layers, dim 576, ffn 1536, 9/3 heads of 64, vocab 49152.
fn smol_like(ctx: usize, sessions: usize) -> Footprint {
    let (dim, ffn, kv_dim, vocab) = (576u64, 1536u64, 192u64, 49152u64);
    let attn = 2 * q4_1(dim, dim) + 2 * q4_1(kv_dim, dim);
    let kv_per_position = 2 * kv_dim * 4;
    let layer = LayerFootprint {
        attention: Part { gpu: attn, cpu_read: attn },
        kv: kv_per_position * (ctx * sessions) as u64,
        kv_per_position,
        neuron_rows: [dim / 32 * 20, dim / 32 * 20, dim / 32 * 34],
        neuron_cpu_read: (3 * q4_1(ffn, dim)) as f64 / ffn as f64,
        whole_ffn: Part { gpu: 3 * q4_1(ffn, dim), cpu_read: 3 * q4_1(ffn, dim) },
    };
    let output = vocab * dim / 32 * 34;
    Footprint {
        ctx,
        sessions,
        dim: dim as usize,
        ffn_dim: ffn as usize,
        vocab: vocab as usize,
        layers: vec![layer; 30],
        output: Part { gpu: output, cpu_read: output },
        scratch: 4 * (32 * (576 * 4 + 576 * 2 + 192 * 2 + 64 + 1536 * 2) + 2 * 1536) as u64,
        logits_scratch: 4 * 32 * vocab,
    }
}

/// Rows of 18 and 34 bytes (Q4_0 / Q8_0 of 32): padding matters; a bias of 3 floats.
fn odd_sized(ctx: usize) -> Footprint {
    let layer = LayerFootprint {
        attention: Part { gpu: 4 * 18 * 32 + 12 + 4, cpu_read: 4 * 18 * 32 + 12 + 3 },
        kv: 2 * 8 * 4 * ctx as u64,
        kv_per_position: 2 * 8 * 4,
        neuron_rows: [18, 18, 34],
        neuron_cpu_read: 54.0,
        whole_ffn: Part { gpu: 3 * 18 * 97 + 2, cpu_read: 3 * 18 * 97 },
    };
    Footprint {
        ctx,
        sessions: 1,
        dim: 32,
        ffn_dim: 97,
        vocab: 101,
        layers: vec![layer; 5],
        output: Part { gpu: 101 * 34 + 2, cpu_read: 101 * 34 },
        scratch: 1000,
        logits_scratch: 4 * 32 * 101,
    }
}

/// Power-law frequencies: the neuron of rank r (a pseudo-random permutation per layer) is
/// active with probability min(1, 0.9 / (r + 1)^0.6 + 0.005).
fn power_law(layers: usize, ffn: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut out = vec![0.0; layers * ffn];
    for l in 0..layers {
        let mut ids: Vec<usize> = (0..ffn).collect();
        for i in (1..ffn).rev() {
            ids.swap(i, next() % (i + 1));
        }
        for (rank, &j) in ids.iter().enumerate() {
            out[l * ffn + j] = (0.9 / ((rank + 1) as f32).powf(0.6) + 0.005).min(1.0);
        }
    }
    out
}

fn budget(fp: &Footprint, vram: u64) -> Budget {
    Budget { vram, ctx: fp.ctx, sessions: fp.sessions }
}

/// The bytes the plan's parts take, recomputed from the footprint independently of the planner.
fn recount(fp: &Footprint, p: &Placement) -> u64 {
    let pad4 = |b: u64| b.div_ceil(4) * 4;
    let layers: u64 = p
        .layers
        .iter()
        .zip(&fp.layers)
        .map(|(lp, lf)| {
            let attn = if lp.attention == Device::Gpu { lf.attention.gpu + lf.kv } else { 0 };
            let n = lp.hot.len() as u64;
            let ffn = if lp.whole_ffn { lf.whole_ffn.gpu } else { lf.neuron_rows.iter().map(|r| pad4(r * n)).sum() };
            assert_eq!(lp.gpu_bytes, attn + ffn, "layer bytes");
            attn + ffn
        })
        .sum();
    let output = if p.output == Device::Gpu { fp.output.gpu + fp.logits_scratch } else { 0 };
    let anything = layers + output > 0;
    assert_eq!(p.scratch_bytes, if anything { fp.scratch } else { 0 }, "scratch only when something is on the GPU");
    layers + output + p.scratch_bytes
}

/// Budgets from nothing to twice the whole model, with the edges around the scratch.
fn budgets(fp: &Footprint) -> Vec<u64> {
    let whole = fp.whole_model_gpu();
    let mut b = vec![0, 1, fp.scratch - 1, fp.scratch, fp.scratch + 1, fp.scratch + 1000, whole / 4, whole / 2, whole - 1, whole, whole + 1, 2 * whole, u64::MAX];
    b.extend((1..40).map(|i| whole / 40 * i + 7 * i));
    b
}

#[test]
fn a_plan_never_exceeds_its_budget_and_counts_its_bytes_exactly() {
    for fp in [smol_like(2048, 1), smol_like(512, 3), odd_sized(64)] {
        let freq = power_law(fp.layers.len(), fp.ffn_dim, 7);
        for vram in budgets(&fp) {
            for mode in [Offload::Neurons, Offload::Layers] {
                for f in [None, Some(freq.as_slice())] {
                    let p = Placement::plan(&fp, f, &budget(&fp, vram), mode).unwrap();
                    assert!(p.gpu_bytes <= vram, "{mode:?} {vram}: {} > budget", p.gpu_bytes);
                    assert_eq!(p.gpu_bytes, recount(&fp, &p), "{mode:?} {vram}: the plan's total is the sum of its parts");
                    assert!(p.coverage.taken <= p.coverage.bound * (1.0 + 1e-9) + 1e-6, "{mode:?} {vram}: above the upper bound {:?}", p.coverage);
                    for l in &p.layers {
                        assert!(l.hot.windows(2).all(|w| w[0] < w[1]) && l.hot.iter().all(|&j| (j as usize) < fp.ffn_dim));
                        assert!(!l.reason.is_empty());
                    }
                }
            }
        }
    }
}

#[test]
fn below_the_scratch_everything_stays_on_the_cpu_and_says_why() {
    let fp = smol_like(2048, 1);
    let p = Placement::plan(&fp, None, &budget(&fp, fp.scratch - 1), Offload::Neurons).unwrap();
    assert_eq!(p.gpu_bytes, 0);
    assert!(p.layers.iter().all(|l| l.attention == Device::Cpu && l.hot.is_empty()) && p.output == Device::Cpu);
    assert!(p.reason.contains("scratch"), "{}", p.reason);
    assert_eq!(Placement::cpu_only(30).layers.len(), 30);
}

#[test]
fn more_budget_never_covers_less() {
    let fp = smol_like(2048, 1);
    let freq = power_law(30, fp.ffn_dim, 11);
    for mode in [Offload::Neurons, Offload::Layers] {
        for f in [None, Some(freq.as_slice())] {
            let mut last = (0.0, 0.0);
            for i in 0..=80 {
                let vram = fp.whole_model_gpu() / 80 * i + 3 * i;
                let p = Placement::plan(&fp, f, &budget(&fp, vram), mode).unwrap();
                let mass: f64 = p.layers.iter().map(|l| l.mass).sum();
                assert!(p.coverage.taken >= last.0 - 1e-6, "{mode:?} at {vram}: {} < {}", p.coverage.taken, last.0);
                // FFN mass alone may drop in neurons mode when the output matrix starts to fit
                // (read every token, it is worth more per byte than most neurons); what the GPU
                // takes off the CPU never drops.
                if mode == Offload::Layers {
                    assert!(mass >= last.1 - 1e-9, "{mode:?} at {vram}: mass {mass} < {}", last.1);
                }
                last = (p.coverage.taken, mass);
            }
        }
    }
}

#[test]
fn a_whole_model_budget_puts_everything_on_the_gpu() {
    for fp in [smol_like(1024, 2), odd_sized(16)] {
        let freq = power_law(fp.layers.len(), fp.ffn_dim, 3);
        for mode in [Offload::Neurons, Offload::Layers] {
            for f in [None, Some(freq.as_slice())] {
                let p = Placement::plan(&fp, f, &budget(&fp, fp.whole_model_gpu()), mode).unwrap();
                assert!(p.layers.iter().all(|l| l.attention == Device::Gpu && l.whole_ffn && l.hot.len() == fp.ffn_dim), "{mode:?}\n{p}");
                assert!(p.layers.iter().all(|l| (l.mass - 1.0).abs() < 1e-9));
                assert_eq!(p.output, Device::Gpu);
                assert_eq!(p.gpu_bytes, fp.whole_model_gpu());
                assert!(p.coverage.gap() < 1e-9 && (p.coverage.taken - p.coverage.total).abs() < 1e-3 * p.coverage.total);
            }
        }
    }
}

#[test]
fn layers_mode_takes_whole_layers_from_the_first_while_they_fit() {
    let fp = smol_like(2048, 1);
    for vram in budgets(&fp) {
        let p = Placement::plan(&fp, None, &budget(&fp, vram), Offload::Layers).unwrap();
        let k = p.layers.iter().take_while(|l| l.attention == Device::Gpu).count();
        for (i, l) in p.layers.iter().enumerate() {
            let on = i < k;
            assert_eq!((l.attention == Device::Gpu, l.whole_ffn, l.hot.is_empty()), (on, on, !on), "layer {i} at {vram}");
        }
        if k < p.layers.len() {
            let next = fp.layers[k].attention.gpu + fp.layers[k].kv + fp.layers[k].whole_ffn.gpu;
            let used = if p.gpu_bytes == 0 { fp.scratch } else { p.gpu_bytes - p.output_bytes };
            assert!(used + next > vram, "layer {k} would have fit at {vram}");
        }
    }
}

/// The planner against its upper bound (the FFN's LP with the whole items enumerated; see
/// `placement/neurons.rs`) on a power-law profile, over 40 budgets from a fortieth of the model
/// to all of it: within 0.5% everywhere (measured: under 0.05%), and never further than the value
/// of one attention part. (Not on `odd_sized`: there one neuron is a tenth of the smallest
/// budget, and the bound's fraction of a neuron is then a real gap.)
#[test]
fn greedy_is_within_the_stated_gap_of_the_lp_bound_on_a_power_law_profile() {
    for (fp, seed) in [(smol_like(2048, 1), 5), (smol_like(256, 4), 6), (smol_like(8192, 1), 7)] {
        let freq = power_law(fp.layers.len(), fp.ffn_dim, seed);
        let whole = fp.whole_model_gpu();
        let mut worst = 0.0f64;
        for i in 1..=40 {
            let vram = whole / 40 * i;
            let p = Placement::plan(&fp, Some(&freq), &budget(&fp, vram), Offload::Neurons).unwrap();
            let c = p.coverage;
            if std::env::var_os("PLAN_DEBUG").is_some() {
                eprintln!("{p}");
            }
            assert!(c.bound - c.taken <= fp.layers[0].attention.cpu_read as f64 + 1.0, "at {vram}: {c:?}");
            assert!(c.gap() < 0.005, "at {vram} ({i}/40 of the model): greedy {:.0} vs bound {:.0}", c.taken, c.bound);
            worst = worst.max(c.gap());
        }
        eprintln!("worst gap to the upper bound over 40 budgets ({} layers, ctx {}): {:.3}%", fp.layers.len(), fp.ctx, 100.0 * worst);
    }
}

/// With skewed frequencies the hot neurons go first, and a layer's GPU share follows its mass.
#[test]
fn hot_neurons_are_the_most_frequent_ones() {
    let fp = smol_like(2048, 1);
    let freq = power_law(30, fp.ffn_dim, 9);
    let p = Placement::plan(&fp, Some(&freq), &budget(&fp, fp.whole_model_gpu() / 5), Offload::Neurons).unwrap();
    for (l, lp) in p.layers.iter().enumerate().filter(|(_, lp)| !lp.whole_ffn && !lp.hot.is_empty()) {
        let row = &freq[l * fp.ffn_dim..(l + 1) * fp.ffn_dim];
        let coldest_hot = lp.hot.iter().map(|&j| row[j as usize]).fold(f32::INFINITY, f32::min);
        let hottest_cold = (0..fp.ffn_dim as u32).filter(|j| lp.hot.binary_search(j).is_err()).map(|j| row[j as usize]).fold(0.0, f32::max);
        assert!(coldest_hot >= hottest_cold, "layer {l}: a colder neuron is on the GPU");
        assert!(lp.mass > lp.hot.len() as f64 / fp.ffn_dim as f64, "layer {l}: the hot share covers more than its count");
    }
    let text = p.to_string();
    assert!(text.contains("| layer |") && text.contains("| output |") && text.contains("upper bound"), "{text}");
}

#[test]
fn bad_inputs_are_errors_naming_the_problem() {
    let fp = smol_like(2048, 1);
    let b = budget(&fp, 50 << 20);
    let e = Placement::plan(&fp, Some(&[0.5; 10]), &b, Offload::Neurons).unwrap_err().to_string();
    assert!(e.contains("frequency") && e.contains("30 × 1536"), "{e}");
    let mut f = vec![0.5; 30 * 1536];
    f[1537] = f32::NAN;
    let e = Placement::plan(&fp, Some(&f), &b, Offload::Neurons).unwrap_err().to_string();
    assert!(e.contains("layer 1 neuron 1"), "{e}");
    let e = Placement::plan(&fp, None, &Budget { ctx: 4096, ..b }, Offload::Neurons).unwrap_err().to_string();
    assert!(e.contains("4096") && e.contains("2048"), "{e}");
    let e = Placement::plan(&fp, None, &Budget { ctx: 0, ..b }, Offload::Neurons).unwrap_err().to_string();
    assert!(e.contains("ctx"), "{e}");
}

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    let good = [
        ("4096", 4096),
        ("0", 0),
        ("512MiB", 512 << 20),
        ("512 MiB", 512 << 20),
        ("3.5GiB", 7 << 29),
        ("8GB", 8_000_000_000),
        ("8gb", 8_000_000_000),
        ("1.5G", 3 << 29),
        ("100M", 100 << 20),
        ("64K", 64 << 10),
        ("2KB", 2000),
        ("1TiB", 1 << 40),
        ("1T", 1 << 40),
        ("10B", 10),
    ];
    for (s, want) in good {
        assert_eq!(parse_size(s), Ok(want), "{s}");
    }
    let bad = [
        ("3.5XB", "unknown unit 'XB'"),
        ("", "empty"),
        ("GiB", "no number"),
        ("-1GiB", "negative"),
        ("1.5", "whole"),
        ("1.2.3G", "not a number"),
        ("99999999999TiB", "too large"),
    ];
    for (s, needle) in bad {
        let e = parse_size(s).unwrap_err();
        assert!(e.contains(needle), "{s:?}: {e}");
    }
}

#[test]
fn links_parse_and_carry_their_pcie_bandwidth() {
    assert_eq!("pcie3x16".parse::<Link>(), Ok(Link::Pcie3x16));
    assert_eq!("PCIe3 x1".parse::<Link>(), Ok(Link::Pcie3x1));
    assert_eq!("pcie-4-x16".parse::<Link>(), Ok(Link::Pcie4x16));
    assert!((Link::Pcie3x16.bandwidth() - 15.75).abs() < 1e-9 && (Link::Pcie4x16.bandwidth() - 31.5).abs() < 1e-9);
    assert!((Link::Pcie1x1.bandwidth() - 0.25).abs() < 1e-9 && (Link::Pcie2x1.bandwidth() - 0.5).abs() < 1e-9);
    assert!(Link::Pcie3x1.bandwidth() < Link::Pcie3x4.bandwidth() && Link::Pcie4x16.bandwidth() < Link::Pcie5x16.bandwidth());
    let e = "pcie9x3".parse::<Link>().unwrap_err();
    assert!(e.contains("pcie9x3") && e.contains("pcie3x16"), "{e}");
    assert_eq!("layers".parse::<Offload>(), Ok(Offload::Layers));
    assert!("rows".parse::<Offload>().unwrap_err().contains("neurons or layers"));
}

/// The bound: CPU only reads everything at the CPU's bandwidth; a whole-model plan on a fast GPU
/// is faster; a slow link makes a split plan slower than a fast one.
#[test]
fn decode_bound_follows_the_bytes() {
    let fp = smol_like(2048, 1);
    let hw = Hardware { gpu_bandwidth: 192.0, cpu_bandwidth: 20.0, link: Link::Pcie3x16 };
    let cpu = Placement::plan(&fp, None, &budget(&fp, 0), Offload::Neurons).unwrap().decode_bound(&fp, None, &hw).unwrap();
    assert_eq!((cpu.gpu_ms, cpu.link_ms), (0.0, 0.0));
    let bytes: f64 = fp.layers.iter().map(|l| (l.attention.cpu_read + l.whole_ffn.cpu_read + l.kv_per_position * 1024) as f64).sum::<f64>() + fp.output.cpu_read as f64;
    assert!((cpu.cpu_ms - bytes / 20e9 * 1e3).abs() < 1e-6, "{cpu:?}");
    assert!((cpu.tokens_per_s - 1e3 / cpu.cpu_ms).abs() < 1e-6);
    let gpu = Placement::plan(&fp, None, &budget(&fp, fp.whole_model_gpu()), Offload::Neurons).unwrap().decode_bound(&fp, None, &hw).unwrap();
    assert!(gpu.tokens_per_s > 5.0 * cpu.tokens_per_s && gpu.cpu_ms == 0.0, "{gpu:?}");
    let freq = power_law(30, fp.ffn_dim, 1);
    let half = Placement::plan(&fp, Some(&freq), &budget(&fp, fp.whole_model_gpu() / 3), Offload::Neurons).unwrap();
    let fast = half.decode_bound(&fp, Some(&freq), &hw).unwrap();
    let slow = half.decode_bound(&fp, Some(&freq), &Hardware { link: Link::Pcie1x1, ..hw }).unwrap();
    assert!(slow.link_ms > fast.link_ms && slow.tokens_per_s < fast.tokens_per_s, "{fast:?} vs {slow:?}");
    let e = half.decode_bound(&fp, None, &Hardware { gpu_bandwidth: 0.0, ..hw }).unwrap_err().to_string();
    assert!(e.contains("gpu_bandwidth"), "{e}");
}

/// The real default model, when `EMBER_TEST_MODEL` names it: the footprint's weights add up to
/// the file's, and plans at several budgets stay within them.
#[test]
fn the_default_model_plans_within_its_budgets() {
    let Some(path) = std::env::var_os("EMBER_TEST_MODEL") else {
        eprintln!("EMBER_TEST_MODEL not set: skipping the real-model placement test");
        return;
    };
    let files = ember_engine::loader::open(std::path::Path::new(&path)).unwrap();
    let model = ember_engine::model::Model::load(&files.config, &files.weights).unwrap();
    let b = Budget { vram: 0, ctx: 1024, sessions: 1 };
    let fp = Footprint::of(&model, &b);
    let weights: u64 = fp.layers.iter().map(|l| l.attention.cpu_read + l.whole_ffn.cpu_read).sum::<u64>() + fp.output.cpu_read;
    assert_eq!(weights, model.weight_bytes() as u64);
    for vram in [0, 8 << 20, 32 << 20, 100 << 20, 1 << 30] {
        for mode in [Offload::Neurons, Offload::Layers] {
            let p = Placement::plan(&fp, None, &Budget { vram, ..b }, mode).unwrap();
            assert!(p.gpu_bytes <= vram);
            assert_eq!(p.gpu_bytes, recount(&fp, &p));
        }
    }
}
