//! `ember synth`: writes a synthetic llama-architecture GGUF with random weights and controlled
//! FFN activation sparsity and skew (see `ember_engine::synth`). Figures measured on it are
//! synthetic.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use ember_engine::synth::{write_synthetic, SynthSpec};
use ember_engine::Activation;
use ember_kernels::DType;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::log;

#[derive(Args)]
pub struct SynthArgs {
    /// tiny | small | 1b | 7b | 13b.
    #[arg(long, default_value = "small")]
    pub shape: String,
    /// FFN activation: relu | silu.
    #[arg(long, default_value = "relu")]
    pub act: String,
    /// Share of FFN neurons inactive per token.
    #[arg(long, default_value_t = 0.9)]
    pub sparsity: f32,
    /// Weight format: q4_0 | q8_0 | f16 | f32.
    #[arg(long, default_value = "q4_0")]
    pub quant: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let act = match a.act.as_str() {
        "relu" => Activation::Relu,
        "silu" => Activation::Silu,
        other => bail!("--act: unknown activation `{other}` (relu, silu)"),
    };
    let dtype = match a.quant.to_lowercase().as_str() {
        "q4_0" => DType::Q4_0,
        "q8_0" => DType::Q8_0,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => bail!("--quant: unknown format `{other}` (q4_0, q8_0, f16, f32)"),
    };
    let Some(mut spec) = SynthSpec::shape(&a.shape, act, a.sparsity, dtype) else {
        bail!("--shape: unknown shape `{}` (tiny, small, 1b, 7b, 13b)", a.shape)
    };
    spec.seed = a.seed;
    log::info(&format!("writing a synthetic {} model ({:.2} GiB of weights)", a.shape, spec.weight_bytes() as f64 / (1u64 << 30) as f64));
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} tensors {pos}/{len} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    write_synthetic(&spec, &a.output, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    log::info(&format!("wrote {} (synthetic)", a.output.display()));
    Ok(())
}
