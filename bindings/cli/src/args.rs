//! Options shared by several subcommands, and their conversion to engine parameters.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::Args;
use ember_engine::generate::{GenerationParams, Overflow};
use ember_engine::placement::{parse_size, Offload};
use ember_engine::sampling::{Penalties, SamplingParams, Strategy};
use ember_engine::sparsity::{Criterion, SparsityOptions};
use ember_engine::{Engine, EngineOptions};
use ember_kernels::backend::DeviceSpec;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face folder, or a known model name (`ember pull --list`);
    /// default: the default model, downloaded on first use.
    #[arg(short, long, env = "EMBER_MODEL")]
    pub model: Option<String>,
    /// Context length in tokens (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub sparse: SparseArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Offloading to a GPU (the placement: `ember plan` shows what a budget buys).
#[derive(Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// GPU to offload to: auto (the first real GPU, else the CPU only), none, cuda:N, wgpu:N,
    /// host (the CPU backend standing in for a GPU: tests the placement without one).
    #[arg(long, default_value = "auto", value_parser = DeviceSpec::from_str)]
    pub gpu: DeviceSpec,
    /// Device memory the placement may use: bytes, or 512MiB, 3.5GiB, 8GB (decimal), 1.5G (bare
    /// K/M/G/T are binary) (default: what the device reports free, less a tenth).
    #[arg(long, value_parser = parse_size)]
    pub vram: Option<u64>,
    /// How the model is split: neurons (attention and the hottest FFN neurons on the GPU, the
    /// cold ones on the CPU at the same time, like PowerInfer) or layers (whole layers, like
    /// llama.cpp's -ngl).
    #[arg(long, default_value = "neurons", value_parser = Offload::from_str)]
    pub offload: Offload,
}

/// FFN activation sparsity.
#[derive(Args, Clone, Debug, Default)]
pub struct SparseArgs {
    /// Sparsity profile made by `ember profile` (default: `<model>.profile.safetensors` beside
    /// the model, when present).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// FFN sparsity overriding the profile's default (0 = dense).
    #[arg(long)]
    pub sparsity: Option<f32>,
    /// Sparsity criterion overriding the profile's default: ffn_magnitude | input | gate | predictor | dense.
    #[arg(long, value_parser = parse_criterion)]
    pub criterion: Option<Criterion>,
}

fn parse_criterion(s: &str) -> std::result::Result<Criterion, String> {
    Criterion::parse(s).ok_or_else(|| format!("unknown criterion `{s}` ({})", Criterion::names()))
}

impl ModelArgs {
    pub fn open(&self) -> Result<Engine> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global().context("setting up threads")?;
        }
        let path: PathBuf = ember_engine::hub::resolve_model(self.model.as_deref())?;
        let t0 = std::time::Instant::now();
        let sp = &self.sparse;
        let sparsity = SparsityOptions { profile: sp.profile.clone(), sparsity: sp.sparsity, criterion: sp.criterion };
        let d = &self.device;
        let options = EngineOptions { ctx: self.ctx, sparsity, gpu: d.gpu, vram: d.vram, offload: d.offload, ..Default::default() };
        let engine = Engine::open(&path, &options)?;
        log::info(&format!("loaded {} in {:.2?}", path.display(), t0.elapsed()));
        for note in &engine.notes {
            log::info(note);
        }
        match engine.model.sparsity() {
            Some(s) => log::info(&format!("sparse FFN: {}", s.describe())),
            None if self.sparse.profile.is_some() => log::info("sparse FFN: the profile's default is dense"),
            None => {}
        }
        Ok(engine)
    }
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// 1.0 = off.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// 0.0 = off.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (may be repeated).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-turn / EOS tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Drop the start of a prompt longer than the context instead of failing.
    #[arg(long)]
    pub truncate: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> GenerationParams {
        let strategy =
            Strategy::Sample { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, min_p: self.min_p }
                .canonical();
        GenerationParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                strategy,
                penalties: Penalties {
                    repeat: self.repeat_penalty,
                    presence: self.presence_penalty,
                    frequency: self.frequency_penalty,
                    last_n: self.repeat_last_n,
                },
                seed: self.seed.unwrap_or_else(random_seed),
            },
            stop: self.stop.clone(),
            stop_at_eos: !self.ignore_eos,
            overflow: if self.truncate { Overflow::TruncateStart } else { Overflow::Error },
        }
    }
}

pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

pub mod log {
    /// A log line on stderr (stdout carries answers only). `EMBER_QUIET=1` silences it.
    pub fn info(msg: &str) {
        if std::env::var_os("EMBER_QUIET").is_none() {
            eprintln!("ember: {msg}");
        }
    }
}
