//! `ember serve`: the OpenAI-compatible HTTP server (crate `ember-server`) over one model.

use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use ember_server::ServerOptions;

use crate::args::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (default: loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the "listening on" line shows it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <KEY>` on /v1/* requests.
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Generations that run at once; further requests wait in line.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// The model id clients see (default: the model file's name).
    #[arg(long)]
    pub model_alias: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let engine = Arc::new(a.model.open()?);
    let options = ServerOptions { parallel: a.parallel as usize, api_key: a.api_key, model_alias: a.model_alias };
    ember_server::run(engine, &options, &a.host, a.port, |addr| eprintln!("listening on http://{addr}"))?;
    Ok(())
}
