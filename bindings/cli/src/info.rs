//! `ember info` and `ember pull`.

use anyhow::Result;
use clap::Args;

use crate::args::ModelArgs;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Also list every metadata key.
    #[arg(long)]
    pub metadata: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let engine = a.model.open()?;
    let c = engine.config();
    println!("file          {}", engine.path.display());
    println!("architecture  {} ({})", c.arch.name(), c.name);
    println!("layers        {}", c.n_layers);
    println!("hidden        {}", c.dim);
    println!("ffn           {} ({:?})", c.ffn_dim, c.activation);
    println!("heads         {} query, {} key/value, head dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
    println!("vocabulary    {}", c.vocab_size);
    println!("context       {} trained, {} in use", c.train_ctx, engine.ctx());
    println!("rope          theta {}, {:?}, {:?}", c.rope_theta, c.rope_style, c.rope_scaling);
    println!("rms eps       {}", c.rms_eps);
    println!("chat template {}", if engine.chat_template.is_some() { "yes" } else { "no" });
    let t = &engine.tokenizer;
    println!("tokens        bos {:?}, eos {:?}, add_bos {}", t.bos, t.eos, t.add_bos);
    let total: usize = engine.tensor_bytes.iter().map(|(_, b)| b).sum();
    println!("weights       {:.1} MiB in all; read per token {:.1} MiB", mib(total), mib(engine.model.weight_bytes()));
    for (kind, bytes) in &engine.tensor_bytes {
        println!("  {kind:<28} {:>9.2} MiB  {:>5.1}%", mib(*bytes), 100.0 * *bytes as f64 / total as f64);
    }
    if a.metadata {
        if let Some(g) = &engine.gguf {
            println!("GGUF v{} metadata:", g.version);
            for (k, v) in &g.metadata {
                println!("  {k} = {}", v.summary());
            }
        }
    }
    Ok(())
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[derive(Args)]
pub struct PullArgs {
    /// A known model name (default: the default model).
    pub name: Option<String>,
    /// List the known models.
    #[arg(long)]
    pub list: bool,
}

pub fn pull(a: PullArgs) -> Result<()> {
    if a.list {
        for m in ember_engine::hub::known_models() {
            println!("{}", m.name);
        }
        return Ok(());
    }
    let path = ember_engine::hub::pull(a.name.as_deref(), &|step| eprintln!("ember: {step}"))?;
    println!("{}", path.display());
    Ok(())
}
