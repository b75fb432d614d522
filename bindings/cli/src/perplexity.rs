//! `ember perplexity`: perplexity and top-1 next-token accuracy over a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ember_engine::eval::{perplexity, PerplexityParams};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ModelArgs;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (tokenized whole, without BOS).
    #[arg(short, long)]
    pub file: PathBuf,
    /// Score at most this many windows.
    #[arg(long)]
    pub windows: Option<usize>,
    /// Print one JSON line: {"ppl":…, "top1":…, "tokens":…, "windows":…, "sparsity":…}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut a: PerplexityArgs) -> Result<()> {
    // `--ctx` is the window length here (default 512), as in llama-perplexity.
    let window = a.model.ctx.take().unwrap_or(512);
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let engine = a.model.open()?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} windows {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let params = PerplexityParams { ctx: window, windows: a.windows, ..Default::default() };
    let t0 = std::time::Instant::now();
    let r = perplexity(&engine, &text, &params, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let sparsity = r.sparsity.sparsity();
    if a.json {
        let j = serde_json::json!({"ppl": r.ppl, "top1": r.top1, "tokens": r.tokens, "windows": r.windows,
            "sparsity": sparsity, "gate_up_fraction": r.sparsity.gate_up_fraction()});
        println!("{j}");
    } else {
        println!(
            "perplexity {:.4}  top-1 accuracy {:.4}  FFN sparsity {:.1}%  ({} predictions in {} windows of {window}, {:.1?})",
            r.ppl,
            r.top1,
            sparsity * 100.0,
            r.tokens,
            r.windows,
            t0.elapsed()
        );
    }
    Ok(())
}
