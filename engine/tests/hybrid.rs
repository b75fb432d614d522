//! The hybrid executor against the CPU-only engine on the default model (SmolLM2-135M Q4_1), for
//! VRAM budgets of 0, 25, 50 and 100% of the model's weight bytes, on every device this machine
//! has: `host` (the CPU backend standing in for a GPU) always, `wgpu:0` when an adapter exists
//! (Mesa's lavapipe in CI, where `EMBER_REQUIRE_WGPU=1` makes its absence a failure), `cuda:0`
//! when one opens (`EMBER_REQUIRE_CUDA=1` likewise).
//!
//! Checked per device and budget: the device memory held never exceeds the budget; 32 greedy
//! steps on the reference prompts agree with the CPU-only engine's (teacher-forced logits within
//! a tolerance, the same argmax wherever the CPU-only engine's top two are not near-tied, and the
//! free-running greedy tokens equal up to the first near-tie); perplexity within 0.5%.

#[path = "common/tokenizer_util.rs"]
mod util;

use std::path::Path;

use ember_engine::eval::{perplexity_of_tokens, PerplexityParams};
use ember_engine::generate::GenerationParams;
use ember_engine::model::Logits;
use ember_engine::placement::Offload;
use ember_engine::{Engine, EngineOptions};
use ember_engine::synth::{write_synthetic, SynthSpec};
use ember_engine::Activation;
use ember_kernels::backend::DeviceSpec;
use ember_kernels::DType;

/// The GPU part reads each hot neuron's `down` column requantized to Q8_0 and the CPU part
/// quantizes an `h` whose hot entries are zero, so the float rounding differs from the CPU-only
/// engine's, and prompts go through the device in chunks of 32; on this model such differences
/// grow through the 30 layers to about a unit (0.38–0.66 measured at budgets of 2–50% with the
/// 256-bit kernels; 0.96–1.30 at 25–100% once the 512-bit ones changed the float order, and
/// 1.28–1.44 with a vectorised `exp` in the softmax, every time with perplexity equal to 4
/// decimals: the figure moves with any change of float order, by chaotic amplification), about
/// the 0.89 that decode and prefill already differ by (`golden.rs` BATCH_TOL). A wrong hot/cold
/// split, a lost partial output or a stale KV row moves logits by several units, and the
/// perplexity check below catches smaller systematic errors.
const LOGIT_TOL: f32 = 2.0;
/// wgpu's products read the activations in f32, where the CPU (and `host`) quantize them to 8
/// bits per block of 32 as llama.cpp does: the device's layers then compute what the float32
/// reference does (perplexity on WikiText's first 2 windows of 512 with the whole model on
/// lavapipe 20.4648, the reference 20.4646, the CPU-only engine 20.5143), so the gap to the
/// CPU-only engine is that quantization's, amplified through the layers: 2.07 / 1.89 / 1.74
/// measured at 25 / 50 / 100% of the model on lavapipe.
const F32_DEVICE_TOL: f32 = 3.0;
/// On the synthetic model (4 layers, no such amplification) the hybrid differs from the CPU-only
/// engine only by the Q8_0 copy of the hot neurons' `down` columns and the float order.
const SYNTH_TOL: f32 = 0.03;
/// Hybrid against CPU-only at the input criterion's 50% on the synthetic model: SYNTH_TOL's
/// causes plus the device's hot neurons kept below the |h| threshold. Measured 0.031–0.034
/// (host, lavapipe); with the input's channels left unzeroed on the hybrid path 0.098–0.101,
/// and dense against the CPU-only input setting 0.091.
const SPARSE_HYBRID_TOL: f32 = 0.06;
/// Steps where the CPU-only engine's top two logits are closer than this may flip.
const NEAR_TIE: f32 = 1.25;
/// Perplexity within 0.5% of the CPU-only engine's.
const PPL_REL_TOL: f64 = 0.005;
const STEPS: usize = 32;
const BUDGETS: [f64; 4] = [0.0, 0.25, 0.5, 1.0];

fn cpu_engine() -> Engine {
    open(&util::smollm_path(), DeviceSpec::None, None, Offload::Neurons)
}

fn open(path: &Path, gpu: DeviceSpec, vram: Option<u64>, offload: Offload) -> Engine {
    let options = EngineOptions { gpu, vram, offload, ctx: Some(512), ..Default::default() };
    Engine::open(path, &options).expect("the model opens")
}

fn hybrid_engine(gpu: DeviceSpec, vram: u64, offload: Offload) -> Engine {
    open(&util::smollm_path(), gpu, Some(vram), offload)
}

/// The devices to test: `host`, and `wgpu:0` and `cuda:0` when they open (probed without a
/// model, so the synthetic tests also run where only the test binary travels). Where
/// `EMBER_REQUIRE_WGPU=1` or `EMBER_REQUIRE_CUDA=1`, that device failing to open is a failure.
fn devices() -> Vec<DeviceSpec> {
    let mut out = vec![DeviceSpec::Host];
    for (device, require) in [(DeviceSpec::Wgpu(0), "EMBER_REQUIRE_WGPU"), (DeviceSpec::Cuda(0), "EMBER_REQUIRE_CUDA")] {
        match ember_kernels::backend::open(device) {
            Ok(Some(_)) => out.push(device),
            other => {
                let why = other.err().map_or("no device".to_string(), |e| e.to_string());
                assert!(!std::env::var(require).is_ok_and(|v| v == "1"), "{require}=1 but {device} did not open: {why}");
                eprintln!("{device} not tested: {why}");
            }
        }
    }
    out
}

fn argmax_and_margin(row: &[f32]) -> (u32, f32) {
    let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > first {
            (second, first, best) = (first, v, i);
        } else if v > second {
            second = v;
        }
    }
    (best as u32, first - second)
}

/// The CPU-only engine's greedy path: tokens and, per step, its logits.
fn cpu_path(e: &Engine, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = e.model.new_cache(e.ctx());
    let mut row = e.model.forward(prompt, &mut cache, Logits::Last).unwrap().to_vec();
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let (t, _) = argmax_and_margin(&row);
        tokens.push(t);
        rows.push(row.clone());
        row = e.model.forward(&[t], &mut cache, Logits::Last).unwrap().to_vec();
    }
    (tokens, rows)
}

fn check_against_cpu(h: &Engine, cpu: &Engine, what: &str, vram: u64) {
    let tol = if h.device().starts_with("wgpu") { F32_DEVICE_TOL } else { LOGIT_TOL };
    let r = util::reference("smollm2-135m", "greedy.json");
    let mut worst = 0.0f32;
    for p in r["prompts"].as_array().unwrap() {
        let prompt = h.encode_prompt(p["prompt_text"].as_str().unwrap()).unwrap();
        let (tokens, rows) = cpu_path(cpu, &prompt);
        // Teacher-forced on the CPU-only path: every step's logits. (One sequence at a time: the
        // plan holds one KV cache on the device.)
        let mut cache = h.model.new_cache(h.ctx());
        let mut row = h.model.forward(&prompt, &mut cache, Logits::Last).unwrap().to_vec();
        for (step, (t, want)) in tokens.iter().zip(&rows).enumerate() {
            let dev = util::max_abs_diff(&row, want);
            worst = worst.max(dev);
            assert!(dev < tol, "{what}: step {step}: logits {dev} away from the CPU-only engine's (tolerance {tol})");
            let (top, margin) = argmax_and_margin(want);
            if margin >= NEAR_TIE {
                assert_eq!(argmax_and_margin(&row).0, top, "{what}: step {step}: argmax differs (CPU margin {margin})");
            }
            row = h.model.forward(&[*t], &mut cache, Logits::Last).unwrap().to_vec();
            assert!(h.gpu_bytes() as u64 <= vram, "{what}: {} device bytes held, budget {vram}", h.gpu_bytes());
        }
        drop(cache);
        // Free-running greedy generation equals the CPU-only tokens up to the first near-tie.
        let firm = rows.iter().position(|r| argmax_and_margin(r).1 < NEAR_TIE).unwrap_or(STEPS);
        let params = GenerationParams { stop_at_eos: false, ..GenerationParams::greedy(STEPS) };
        let mut session = h.session();
        let got: Vec<u32> = session.generate(&prompt, &params).unwrap().map(|piece| piece.unwrap().token).collect();
        assert_eq!(got[..firm], tokens[..firm], "{what}: greedy tokens before the first near-tie (step {firm})");
    }
    eprintln!("{what}: logits within {worst} of the CPU-only engine over {STEPS} steps per prompt");
}

/// WikiText's first window of 512 tokens (511 predictions), as the reference scores them. Shorter
/// windows are noisier: on 3 windows of 128 the whole model on lavapipe gave +0.54% against the
/// CPU-only engine, while on 2 windows of 512 it matched the float32 reference (see
/// `F32_DEVICE_TOL`).
fn perplexity(e: &Engine) -> f64 {
    let text = std::fs::read_to_string(util::data_dir().join("wikitext-2-tokens-test.txt")).unwrap();
    let ids = e.tokenizer.encode(&text[..20_000], false).unwrap();
    let params = PerplexityParams { ctx: 512, windows: Some(1), ..Default::default() };
    perplexity_of_tokens(e, &ids, &params, &mut |_, _| {}).unwrap().ppl
}

#[test]
fn hybrid_matches_cpu_only_at_every_budget() {
    let cpu = cpu_engine();
    let model_bytes = cpu.model.weight_bytes() as u64;
    let cpu_ppl = perplexity(&cpu);
    // Every device, lavapipe too (about 1.5-3 tokens/s on this model there: the slowest test).
    for device in devices() {
        for share in BUDGETS {
            let vram = (model_bytes as f64 * share) as u64;
            let what = format!("{device} at {:.0}% ({vram} bytes)", share * 100.0);
            let h = hybrid_engine(device, vram, Offload::Neurons);
            eprintln!("{what}: {} ({:?})", h.device(), h.notes);
            if share == 0.0 {
                assert_eq!(h.device(), "cpu", "{what}: nothing fits, the model stays on the CPU");
            } else {
                let p = h.placement().expect("part of the model is on the GPU");
                assert!(p.gpu_bytes <= vram, "{what}: the plan takes {} bytes", p.gpu_bytes);
            }
            assert!(h.gpu_bytes() as u64 <= vram, "{what}: {} device bytes held", h.gpu_bytes());
            check_against_cpu(&h, &cpu, &what, vram);
            let ppl = perplexity(&h);
            eprintln!("{what}: perplexity {ppl:.4} vs CPU-only {cpu_ppl:.4}");
            assert!((ppl / cpu_ppl - 1.0).abs() < PPL_REL_TOL, "{what}: perplexity {ppl} vs CPU-only {cpu_ppl}");
        }
    }
}

#[test]
fn layer_split_matches_cpu_only() {
    let cpu = cpu_engine();
    let vram = cpu.model.weight_bytes() as u64 / 2;
    let h = hybrid_engine(DeviceSpec::Host, vram, Offload::Layers);
    let p = h.placement().expect("some layers are on the GPU");
    eprintln!("{p}");
    assert!(p.layers.iter().any(|l| l.whole_ffn) && p.layers.iter().any(|l| !l.whole_ffn), "half the model: some layers each way");
    check_against_cpu(&h, &cpu, "host, layer split at 50%", vram);
}

#[test]
fn unavailable_devices_fall_back_to_the_cpu_with_a_note() {
    let h = hybrid_engine(DeviceSpec::Cuda(7), 1 << 30, Offload::Neurons);
    assert_eq!(h.device(), "cpu");
    assert!(h.notes.iter().any(|n| n.contains("cuda:7") && n.contains("CPU")), "{:?}", h.notes);
    let h = hybrid_engine(DeviceSpec::Wgpu(99), 1 << 30, Offload::Neurons);
    assert_eq!(h.device(), "cpu");
    assert!(h.notes.iter().any(|n| n.contains("wgpu:99")), "{:?}", h.notes);
}

/// Teacher-forced decode on a synthetic model (tiny shape, both activations; neuron and layer
/// split, the latter putting attention and its KV cache on the device): the hybrid's
/// logits at every step against the CPU-only engine's, within `SYNTH_TOL`.
#[test]
fn hybrid_matches_cpu_only_on_synthetic_models() {
    let dir = tempfile::tempdir().unwrap();
    for act in [Activation::Silu, Activation::Relu] {
        let mut spec = SynthSpec::shape("tiny", act, 0.9, DType::Q8_0).unwrap();
        spec.ctx = 512;
        let path = dir.path().join(format!("synth-{act:?}.gguf"));
        write_synthetic(&spec, &path, &mut |_, _| {}).unwrap();
        let cpu = open(&path, DeviceSpec::None, None, Offload::Neurons);
        let bytes = cpu.model.weight_bytes() as f64;
        let tokens: Vec<u32> = (0..48).map(|i| (i * 37 % 500) as u32 + 1).collect();
        let mut c0 = cpu.model.new_cache(512);
        let want: Vec<Vec<f32>> = tokens.iter().map(|t| cpu.model.forward(&[*t], &mut c0, Logits::Last).unwrap().to_vec()).collect();
        let runs = [(Offload::Neurons, 0.15), (Offload::Neurons, 0.25), (Offload::Neurons, 0.5), (Offload::Neurons, 1.0), (Offload::Layers, 0.5), (Offload::Layers, 1.5)];
        for device in devices() {
            for (offload, share) in runs {
                let vram = (bytes * share) as u64;
                let h = open(&path, device, Some(vram), offload);
                let what = format!("synthetic {act:?}, {device}, {offload:?} at {:.0}%: {}", share * 100.0, h.device());
                assert!(h.placement().is_some(), "{what}: part of the model is on the GPU ({:?})", h.notes);
                let mut c = h.model.new_cache(512);
                // The first half as one prompt (chunks on the GPU), then one token at a time.
                let half = tokens.len() / 2;
                h.model.forward(&tokens[..half], &mut c, Logits::Last).unwrap();
                let mut worst = 0.0f32;
                for (step, t) in tokens.iter().enumerate().skip(half) {
                    let row = h.model.forward(&[*t], &mut c, Logits::Last).unwrap();
                    let dev = util::max_abs_diff(row, &want[step]);
                    worst = worst.max(dev);
                    assert!(dev < SYNTH_TOL, "{what}: step {step}: logits {dev} away from the CPU-only engine's");
                }
                assert!(h.gpu_bytes() as u64 <= vram, "{what}: {} device bytes held, budget {vram}", h.gpu_bytes());
                eprintln!("{what}: logits within {worst}");
            }
        }
    }
}

/// With the input criterion, the hybrid decode zeroes the FFN input's small channels before
/// either device sees it, as the CPU-only engine and prefill do: teacher-forced logits against
/// the CPU-only engine's at the same setting (synthetic SiLU model, half the weights on the
/// device) within `SPARSE_HYBRID_TOL`. The hot neurons on the device keep every h (only the
/// CPU's cold part applies the |h| threshold), which is where most of the gap comes from.
#[test]
fn hybrid_keeps_the_input_criterion() {
    use ember_engine::profiler::{profile, ProfileParams};
    use ember_engine::sparsity::{Criterion, SparsityOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::shape("tiny", Activation::Silu, 0.9, DType::Q8_0).unwrap();
    spec.ctx = 512;
    let path = dir.path().join("synth-silu.gguf");
    write_synthetic(&spec, &path, &mut |_, _| {}).unwrap();
    let mut cpu_dense = open(&path, DeviceSpec::None, None, Offload::Neurons);
    let corpus = std::fs::read_to_string(util::data_dir().join("tinyshakespeare.txt")).unwrap();
    let params = ProfileParams { tokens: 512, samples: 256, heldout: 128, ctx: 128, ..Default::default() };
    let p = profile(&mut cpu_dense, &corpus, "tinyshakespeare.txt", &params, &mut |_, _, _| {}).unwrap();
    let prof = dir.path().join("synth.profile.safetensors");
    p.save(&prof).unwrap();
    let sparsity = SparsityOptions { profile: Some(prof), sparsity: Some(0.5), criterion: Some(Criterion::Input) };
    let with = |gpu, vram| Engine::open(&path, &EngineOptions { gpu, vram, ctx: Some(512), sparsity: sparsity.clone(), ..Default::default() }).unwrap();
    let cpu = with(DeviceSpec::None, None);
    let tokens: Vec<u32> = (0..32).map(|i| (i * 37 % 500) as u32 + 1).collect();
    let run = |e: &Engine| -> Vec<Vec<f32>> {
        let mut c = e.model.new_cache(512);
        tokens.iter().map(|t| e.model.forward(&[*t], &mut c, Logits::Last).unwrap().to_vec()).collect()
    };
    let worst = |a: &[Vec<f32>], b: &[Vec<f32>]| util::max_abs_diff(&a.concat(), &b.concat());
    let (want, dense) = (run(&cpu), run(&cpu_dense));
    let vram = (cpu.model.weight_bytes() as f64 * 0.5) as u64;
    for device in devices() {
        let h = with(device, Some(vram));
        assert!(h.placement().is_some(), "{device}: part of the model is on the GPU ({:?})", h.notes);
        let got = run(&h);
        let (d, from_dense) = (worst(&got, &want), worst(&dense, &want));
        eprintln!("input 50%, {device}: hybrid vs CPU-only {d}; dense vs CPU-only input {from_dense}");
        assert!(d <= SPARSE_HYBRID_TOL, "{device}: hybrid logits {d} from the CPU-only engine's at input 50% (dense: {from_dense})");
    }
}
