//! `ember plan`: will this model run on my card, and how fast? Prints the placement a VRAM
//! budget buys (per layer: attention's device, hot neurons, bytes, activation mass covered, and
//! why) and the bandwidth bound on decode speed for the given GPU, CPU and link. Opens the model
//! only to measure it; no device is touched.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::Args;
use ember_engine::placement::{parse_size, Budget, Footprint, Hardware, Link, Offload, Placement};
use ember_engine::sparsity::{model_shape, Profile};

use crate::args::log;

#[derive(Args)]
pub struct PlanArgs {
    /// A GGUF file, a Hugging Face folder, or a known model name (`ember pull --list`);
    /// default: the default model.
    #[arg(short, long, env = "EMBER_MODEL")]
    pub model: Option<String>,
    /// Sparsity profile giving each neuron's activation frequency (default:
    /// `<model>.profile.safetensors` beside the model when present; without one every neuron
    /// counts as active every token).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Device memory the placement may use: bytes, or 512MiB, 3.5GiB, 8GB (decimal), 1.5G (bare
    /// K/M/G/T are binary).
    #[arg(long, value_parser = parse_size)]
    pub vram: u64,
    /// Context length each KV cache holds (default: the model's, as `ember run` uses).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Sequences whose KV caches live on the GPU at once (`ember serve --parallel`).
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// neurons (hot neurons and attention on the GPU, cold neurons on the CPU at once) or layers
    /// (whole layers, like llama.cpp's -ngl).
    #[arg(long, default_value = "neurons", value_parser = Offload::from_str)]
    pub offload: Offload,
    /// GPU memory bandwidth in GB/s (default: a GTX 1060 6GB's 192).
    #[arg(long, default_value_t = 192.0, value_parser = parse_bandwidth)]
    pub gpu_bandwidth: f64,
    /// CPU memory bandwidth the decode kernels reach, in GB/s (default: 20, dual-channel DDR4
    /// in practice).
    #[arg(long, default_value_t = 20.0, value_parser = parse_bandwidth)]
    pub cpu_bandwidth: f64,
    /// Host-GPU link: pcie1x1, pcie2x1, pcie3x1, pcie3x4, pcie3x8, pcie3x16, pcie4x4, pcie4x16,
    /// pcie5x16 (x1 links are common on mining risers and some mini PCs).
    #[arg(long, default_value = "pcie3x16", value_parser = Link::from_str)]
    pub link: Link,
}

fn parse_bandwidth(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}': a bandwidth is a positive number of GB/s")),
    }
}

pub fn run(a: PlanArgs) -> Result<()> {
    let path = ember_engine::hub::resolve_model(a.model.as_deref())?;
    let files = ember_engine::loader::open(&path)?;
    let model = ember_engine::model::Model::load(&files.config, &files.weights)?;
    let config = &model.config;
    let profile = load_profile(&files.path, config, a.profile.as_ref())?;
    let frequency = profile.as_ref().map(|(p, _)| p.frequency.as_slice());
    let budget = Budget { vram: a.vram, ctx: a.ctx.unwrap_or(config.train_ctx), sessions: a.sessions };
    let fp = Footprint::of(&model, &budget);
    let placement = Placement::plan(&fp, frequency, &budget, a.offload)?;

    println!("model: {} ({} layers, ffn {}, {:.1} MiB of weights)", files.path.display(), config.n_layers, config.ffn_dim, mib(model.weight_bytes() as u64));
    match &profile {
        Some((_, p)) => println!("neuron frequencies: {}", p.display()),
        None => println!("neuron frequencies: none (no profile): every neuron counts as active every token"),
    }
    println!("whole model on the GPU would take {:.2} MiB", mib(fp.whole_model_gpu()));
    println!("{placement}");

    let hw = Hardware { gpu_bandwidth: a.gpu_bandwidth, cpu_bandwidth: a.cpu_bandwidth, link: a.link };
    println!();
    println!(
        "decode bound (GPU {} GB/s, CPU {} GB/s, {} at {:.2} GB/s + {} µs per transfer; KV read at {} of {} positions):",
        a.gpu_bandwidth,
        a.cpu_bandwidth,
        a.link,
        a.link.bandwidth(),
        Link::LATENCY_S * 1e6,
        budget.ctx / 2,
        budget.ctx
    );
    let other = match a.offload {
        Offload::Neurons => Offload::Layers,
        Offload::Layers => Offload::Neurons,
    };
    let cpu_only = Placement { budget, ..Placement::cpu_only(fp.layers.len()) };
    let rows = [
        (format!("this plan ({})", a.offload), placement.clone()),
        (format!("{other} mode, same budget"), Placement::plan(&fp, frequency, &budget, other)?),
        ("CPU only".to_string(), cpu_only),
    ];
    for (name, p) in rows {
        let bound = p.decode_bound(&fp, frequency, &hw).with_context(|| format!("the bound of {name}"))?;
        println!("  {name:<28} {bound}");
    }
    Ok(())
}

/// The profile `--profile` names (an error if it does not load or is another model's), else the
/// one beside the model (left out with a note when it does not fit).
fn load_profile(model_path: &std::path::Path, config: &ember_engine::ModelConfig, explicit: Option<&PathBuf>) -> Result<Option<(Profile, PathBuf)>> {
    let shape = model_shape(model_path, config);
    if let Some(p) = explicit {
        // Their errors name the file (and repeat their source: only the message is kept).
        let profile = Profile::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
        profile.check_model(p, &shape).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(Some((profile, p.clone())));
    }
    let beside = Profile::beside(model_path);
    if !beside.is_file() {
        return Ok(None);
    }
    match Profile::load(&beside).and_then(|p| p.check_model(&beside, &shape).map(|()| p)) {
        Ok(p) => Ok(Some((p, beside))),
        Err(e) => {
            log::info(&format!("not using {} ({e}): every neuron counts as active", beside.display()));
            Ok(None)
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
