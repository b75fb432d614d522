//! `ember`: the command line. Each subcommand converts its arguments to engine types and calls
//! the engine; no model logic lives here. Answers go to stdout, logs and progress to stderr.

mod args;
mod batch;
mod bench;
mod chat;
mod info;
mod perplexity;
mod plan;
mod profile;
mod run;
mod serve;
mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "Run LLMs on small and old GPUs, and on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer to stdout.
    Run(run::RunArgs),
    /// Interactive multi-turn chat (/reset, /exit, Ctrl-D).
    Chat(chat::ChatArgs),
    /// Generate for every line of a JSONL file; re-running skips ids already answered.
    Batch(batch::BatchArgs),
    /// Perplexity and top-1 accuracy of the model on a text file.
    Perplexity(perplexity::PerplexityArgs),
    /// Profile FFN activations on a corpus: sparsity thresholds, neuron hotness, predictors.
    Profile(profile::ProfileArgs),
    /// Write a synthetic llama GGUF with controlled activation sparsity (figures on it are synthetic).
    Synth(synth::SynthArgs),
    /// Architecture, sizes, formats and bytes by tensor kind.
    Info(info::InfoArgs),
    /// What a VRAM budget puts on the GPU (per layer, with reasons) and how fast it can decode.
    Plan(plan::PlanArgs),
    /// Download a known model (default: the default model) into the cache.
    Pull(info::PullArgs),
    /// Prefill and decode speed (tokens/s) and peak memory, like llama-bench.
    Bench(bench::BenchArgs),
    /// An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(serve::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Info(a) => info::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Pull(a) => info::pull(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
