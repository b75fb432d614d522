//! `ember profile`: runs the model over a calibration corpus and writes the sparsity profile
//! (thresholds, neuron hotness, optional predictors, the default setting with the perplexity
//! that justified it) that `--profile` reads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ember_engine::profiler::{profile, ProfileParams};
use ember_engine::sparsity::Profile;
use ember_predictor::lowrank::TrainConfig;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{log, ModelArgs};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration text (e.g. tiny shakespeare); never the text you evaluate on.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Calibration tokens (histograms, thresholds).
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Tokens for neuron counts and predictor training pairs.
    #[arg(long, default_value_t = 4096)]
    pub samples: usize,
    /// Held-out tokens after the calibration ones, scored to choose the default setting.
    #[arg(long, default_value_t = 2048)]
    pub heldout: usize,
    /// Perplexity the default setting may cost on the held-out slice (0.01 = +1%).
    #[arg(long, default_value_t = 0.01)]
    pub budget: f64,
    /// Train per-layer low-rank activation predictors.
    #[arg(long)]
    pub predictors: bool,
    /// Predictor bottleneck width, or `auto`: 16, 32 and 64 tried per layer, each layer keeping
    /// the one whose decode step reads the fewest bytes (predictor and predicted rows).
    #[arg(long, default_value = "auto", value_parser = parse_ranks)]
    pub rank: Ranks,
    /// Predictor training epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Recall each predictor is calibrated for on held-out pairs.
    #[arg(long, default_value_t = 0.95)]
    pub recall: f32,
    /// Output file (default: `<model>.profile.safetensors` beside the model).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `--rank`: the widths tried per layer (one, or those of `auto`).
#[derive(Clone, Debug)]
pub struct Ranks(Vec<usize>);

/// Widths `--rank auto` tries.
const AUTO_RANKS: [usize; 3] = [16, 32, 64];

fn parse_ranks(s: &str) -> std::result::Result<Ranks, String> {
    match s.trim() {
        "auto" => Ok(Ranks(AUTO_RANKS.to_vec())),
        t => match t.parse::<usize>() {
            Ok(0) => Err("a rank of 0 predicts nothing: give at least 1, or auto".into()),
            Ok(n) => Ok(Ranks(vec![n])),
            Err(_) => Err(format!("'{s}' is neither a width (e.g. 64) nor auto")),
        },
    }
}

pub fn run(mut a: ProfileArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.corpus).with_context(|| format!("reading {}", a.corpus.display()))?;
    a.model.sparse.sparsity = Some(0.0); // profile the dense model, whatever profile sits beside it
    let window = a.model.ctx.unwrap_or(512);
    a.model.ctx = Some(window);
    let mut engine = a.model.open()?;
    let out = a.output.clone().unwrap_or_else(|| Profile::beside(&engine.path));
    let params = ProfileParams {
        tokens: a.tokens,
        samples: a.samples,
        heldout: a.heldout,
        ctx: window,
        predictors: a.predictors.then(|| TrainConfig { epochs: a.epochs, ..Default::default() }),
        ranks: a.rank.0,
        recall: a.recall,
        ppl_budget: a.budget,
        ..Default::default()
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} {msg} {pos}/{len} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let name = a.corpus.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let t0 = std::time::Instant::now();
    let p = profile(&mut engine, &text, &name, &params, &mut |stage, done, total| {
        bar.set_message(stage.to_string());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    p.save(&out)?;
    log::info(&format!("profiled in {:.1?}, wrote {}", t0.elapsed(), out.display()));
    print_summary(&p);
    Ok(())
}

fn print_summary(p: &Profile) {
    let m = &p.meta;
    println!("held-out sweep ({} tokens after the {} calibration tokens of {}):", m.default.heldout_tokens, m.tokens, m.corpus);
    println!("| criterion | target | achieved | perplexity | vs dense | decode t/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &m.sweep {
        let rel = (s.ppl / m.default.dense_ppl - 1.0) * 100.0;
        let dense_products = if s.skips_reads == Some(false) { " (dense products)" } else { "" };
        let tps = s.decode_tps.map_or("-".to_string(), |t| format!("{t:.1}{dense_products}"));
        println!("| {} | {:.0}% | {:.1}% | {:.3} | {rel:+.2}% | {tps} |", s.criterion.name(), s.sparsity * 100.0, s.achieved * 100.0, s.ppl);
    }
    let d = &m.default;
    println!("default: {} at {:.0}% ({})", d.criterion.name(), d.sparsity * 100.0, d.reason);
    let skew: Vec<String> = m.layers.iter().map(|l| format!("{:.2}", l.neurons_for_80pct)).collect();
    println!("neurons holding 80% of activations, per layer: {}", skew.join(" "));
    if m.layers.iter().any(|l| l.predictor.is_some()) {
        println!("| layer | rank | recall | precision | predicted | active |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for (i, l) in m.layers.iter().enumerate() {
            if let Some(s) = &l.predictor {
                println!(
                    "| {i} | {} | {:.3} | {:.3} | {:.1}% | {:.1}% |",
                    s.rank,
                    s.recall,
                    s.precision,
                    s.predicted_fraction * 100.0,
                    s.active_fraction * 100.0
                );
            }
        }
    }
}
