//! `ember bench`: prefill and decode speed, measured the way llama.cpp's `llama-bench -p P -n N`
//! does. Per repetition: a fresh KV cache; a prefill of `P` pseudo-random token ids as ONE
//! forward call; then `N` decode steps of one token each, each step a forward call followed by a
//! greedy pick of the next token (the same work as real greedy decoding). One warm-up repetition
//! is run first and not counted. Tokens/s are averaged over repetitions (mean ± sample standard
//! deviation, as llama-bench reports them). With `--text FILE` the prompt is the file's first `P`
//! tokens and decoding is fed its next `N` (what a sparse setting's predictor meets in use).
//!
//! Human output is a llama-bench-like table on stdout; `--json` prints one line instead. Progress
//! goes to stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_engine::model::Logits;
use ember_engine::sampling::{Sampler, SamplingParams};
use ember_engine::Engine;

use ember_engine::sparsity::SparsityStats;
use crate::args::{log, DeviceArgs, ModelArgs, SparseArgs};

#[derive(Args)]
pub struct BenchArgs {
    /// A GGUF file, a Hugging Face folder, or a known model name (`ember pull --list`).
    #[arg(short, long, env = "EMBER_MODEL")]
    pub model: Option<String>,
    /// Prompt tokens, prefilled as one batch (0 = skip the prefill test).
    #[arg(short = 'p', long = "prompt", default_value_t = 512)]
    pub prompt: usize,
    /// Decode steps of one token each (0 = skip the decode test).
    #[arg(short = 'n', long = "gen", default_value_t = 128)]
    pub gen: usize,
    /// Measured repetitions (after one warm-up repetition that is not counted).
    #[arg(short, long, default_value_t = 5)]
    pub reps: usize,
    /// Compute threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Seed of the pseudo-random prompt ids (splitmix64; the comparison script draws the same).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Take the prompt and the decoded tokens from this text (decode is fed the text's next
    /// token, not its own choice) instead of pseudo-random ids: what sparse settings and their
    /// predictors meet in use.
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[command(flatten)]
    pub sparse: SparseArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Seconds spent in each phase of one repetition (`None`: phase skipped).
struct Rep {
    prefill_s: Option<f64>,
    decode_s: Option<f64>,
    decode_sparsity: SparsityStats,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if a.prompt + a.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    let model_args = ModelArgs { model: a.model.clone(), ctx: Some(a.prompt + a.gen + 1), threads: a.threads, sparse: a.sparse.clone(), device: a.device.clone() };
    let engine = model_args.open()?;
    let vocab = engine.tokenizer.vocab_size().min(engine.config().vocab_size).max(1);
    let (prompt, forced) = match &a.text {
        None => (prompt_ids(a.seed, a.prompt, vocab), None),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let ids = engine.tokenizer.encode(&text, false)?;
            if ids.len() < a.prompt + a.gen.max(1) {
                bail!("{}: {} tokens, fewer than -p {} + -n {}", path.display(), ids.len(), a.prompt, a.gen);
            }
            (ids[..a.prompt].to_vec(), Some(ids[a.prompt..a.prompt + a.gen.max(1)].to_vec()))
        }
    };
    // Without a prefill, decoding starts from the first id of the same pseudo-random sequence.
    let first = prompt_ids(a.seed, 1, vocab)[0];

    log::info("warm-up repetition");
    one_rep(&engine, &prompt, first, a.gen, forced.as_deref())?;
    let mut reps = Vec::with_capacity(a.reps);
    for i in 0..a.reps {
        let r = one_rep(&engine, &prompt, first, a.gen, forced.as_deref())?;
        log::info(&format!("rep {}/{}: {}", i + 1, a.reps, describe(&r, a.prompt, a.gen)));
        reps.push(r);
    }

    let prefill = Stats::of(reps.iter().filter_map(|r| r.prefill_s).map(|s| a.prompt as f64 / s));
    let decode = Stats::of(reps.iter().filter_map(|r| r.decode_s).map(|s| a.gen as f64 / s));
    let mut sparsity = SparsityStats::default();
    reps.iter().for_each(|r| sparsity.add(&r.decode_sparsity));
    let report = Report {
        model: model_name(&engine),
        size_bytes: engine.tensor_bytes.iter().map(|(_, b)| b).sum(),
        weight_bytes_per_token: engine.model.weight_bytes(),
        threads: rayon::current_num_threads(),
        vocab,
        prefill,
        decode,
        peak_rss: peak_rss_bytes(),
        sparsity: engine.model.sparsity().map(|_| sparsity),
        ffn_ms_per_token: (a.gen > 0).then(|| sparsity.ffn_ns as f64 / 1e6 / (a.gen * reps.len()) as f64),
    };
    if a.json {
        println!("{}", report.json(&a));
    } else {
        report.print_table(&a);
    }
    Ok(())
}

/// One repetition on a fresh KV cache: the prefill as one forward call, then `gen` decode steps,
/// each feeding the greedy choice, or the next token of `forced` (the text's own tokens).
fn one_rep(engine: &Engine, prompt: &[u32], first: u32, gen: usize, forced: Option<&[u32]>) -> Result<Rep> {
    let model = &engine.model;
    let mut cache = model.new_cache(prompt.len() + gen + 1);
    let mut sampler = Sampler::new(SamplingParams::greedy())?;
    let mut history: Vec<u32> = Vec::with_capacity(gen); // generated tokens, as in a session
    let mut next = first;

    let mut prefill_s = None;
    if !prompt.is_empty() {
        let t0 = Instant::now();
        let logits = engine.forward(prompt, &mut cache, Logits::Last)?;
        next = sampler.sample(&logits, &history);
        prefill_s = Some(t0.elapsed().as_secs_f64());
        cache.take_sparsity_stats(); // decode's are reported
    }

    let mut decode_s = None;
    if gen > 0 {
        let t0 = Instant::now();
        if let Some(&t) = forced.and_then(|f| f.first()) {
            next = t;
        }
        for i in 0..gen {
            history.push(next);
            let logits = engine.forward(&[next], &mut cache, Logits::Last)?;
            next = match forced.and_then(|f| f.get(i + 1)) {
                Some(&t) => t,
                None => sampler.sample(&logits, &history),
            };
        }
        decode_s = Some(t0.elapsed().as_secs_f64());
    }
    Ok(Rep { prefill_s, decode_s, decode_sparsity: cache.take_sparsity_stats() })
}

/// `n` pseudo-random ids in `0..vocab` from splitmix64 (deterministic; easy to reproduce in
/// another language so another engine can prefill the very same ids).
pub fn prompt_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % vocab as u64) as u32
        })
        .collect()
}

fn describe(r: &Rep, p: usize, n: usize) -> String {
    let mut parts = Vec::new();
    if let Some(s) = r.prefill_s {
        parts.push(format!("prefill {p} tok in {s:.3} s ({:.2} t/s)", p as f64 / s));
    }
    if let Some(s) = r.decode_s {
        parts.push(format!("decode {n} tok in {s:.3} s ({:.2} t/s)", n as f64 / s));
    }
    parts.join(", ")
}

/// Mean and sample standard deviation of tokens/s over repetitions.
#[derive(Clone, Copy)]
struct Stats {
    mean: f64,
    sd: f64,
}

impl Stats {
    fn of(values: impl Iterator<Item = f64>) -> Option<Stats> {
        let v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stats { mean, sd })
    }
}

struct Report {
    model: String,
    size_bytes: usize,
    weight_bytes_per_token: usize,
    threads: usize,
    vocab: usize, // the range the prompt ids are drawn from
    prefill: Option<Stats>,
    decode: Option<Stats>,
    peak_rss: Option<u64>,
    /// Decode's FFN sparsity, when a sparse setting is in use.
    sparsity: Option<SparsityStats>,
    /// Decode's time in the FFN per token (all layers).
    ffn_ms_per_token: Option<f64>,
}

impl Report {
    fn json(&self, a: &BenchArgs) -> String {
        let mean = |s: Option<Stats>| s.map(|s| s.mean);
        let sd = |s: Option<Stats>| s.map(|s| s.sd);
        serde_json::json!({
            "prefill_tps": mean(self.prefill),
            "decode_tps": mean(self.decode),
            "prefill_sd": sd(self.prefill),
            "decode_sd": sd(self.decode),
            "peak_rss_bytes": self.peak_rss,
            "sparsity": self.sparsity.map(|s| s.sparsity()),
            "gate_up_fraction": self.sparsity.map(|s| s.gate_up_fraction()),
            "decode_ffn_ms": self.ffn_ms_per_token,
            "model": self.model,
            "size_bytes": self.size_bytes,
            "weight_bytes_per_token": self.weight_bytes_per_token,
            "threads": self.threads,
            "vocab": self.vocab,
            "seed": a.seed,
            "p": a.prompt,
            "n": a.gen,
            "reps": a.reps,
        })
        .to_string()
    }

    fn print_table(&self, a: &BenchArgs) {
        let size = format!("{:.2} MiB", self.size_bytes as f64 / (1024.0 * 1024.0));
        let mw = self.model.len().max(5);
        println!("| {:<mw$} | {:>10} | {:>7} | {:>7} | {:>20} |", "model", "size", "threads", "test", "t/s");
        println!("|-{:-<mw$}-|-{:->10}:|-{:->7}:|-{:->7}-|-{:->20}:|", "", "", "", "", "");
        let rows = [(format!("pp{}", a.prompt), self.prefill), (format!("tg{}", a.gen), self.decode)];
        for (test, stats) in rows {
            if let Some(s) = stats {
                let ts = format!("{:.2} ± {:.2}", s.mean, s.sd);
                println!("| {:<mw$} | {:>10} | {:>7} | {:>7} | {:>20} |", self.model, size, self.threads, test, ts);
            }
        }
        let rss = match self.peak_rss {
            Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
            None => "n/a".into(),
        };
        println!();
        println!(
            "reps {} (+1 warm-up); weights read per token {:.1} MiB (dense); peak RSS {rss}",
            a.reps,
            self.weight_bytes_per_token as f64 / (1024.0 * 1024.0)
        );
        if let Some(ms) = self.ffn_ms_per_token {
            println!("decode time in the FFN {ms:.3} ms per token");
        }
        if let Some(s) = self.sparsity {
            println!(
                "decode FFN sparsity {:.1}% (gate/up rows computed {:.1}%)",
                s.sparsity() * 100.0,
                s.gate_up_fraction() * 100.0
            );
        }
    }
}

/// The model file's name without `.gguf` (it usually names the quantization too), else the
/// name in the model's metadata.
fn model_name(engine: &Engine) -> String {
    match engine.path.file_name().map(|f| f.to_string_lossy().into_owned()) {
        Some(f) if !f.is_empty() => f.trim_end_matches(".gguf").to_string(),
        _ => engine.config().name.trim().to_string(),
    }
}

/// Peak resident set size of this process (VmHWM); `None` where /proc is not available.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_deterministic_and_in_range() {
        let a = prompt_ids(42, 1000, 49152);
        assert_eq!(a, prompt_ids(42, 1000, 49152));
        assert!(a.iter().all(|&t| t < 49152));
        // splitmix64(seed 0) first output, the published test vector.
        assert_eq!(prompt_ids(0, 1, usize::MAX)[0], 0xE220_A839_7B1D_CDAF_u64 as u32);
    }

    #[test]
    fn stats_use_the_sample_deviation() {
        let s = Stats::of([1.0, 2.0, 3.0].into_iter()).unwrap();
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.sd - 1.0).abs() < 1e-12);
        assert_eq!(Stats::of([5.0].into_iter()).unwrap().sd, 0.0);
        assert!(Stats::of(std::iter::empty()).is_none());
    }
}
