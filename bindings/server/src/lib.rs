//! `ember serve`: an OpenAI-compatible HTTP server over one [`Engine`] (axum on tokio).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both streaming as server-sent
//! events or not), `GET /v1/models`, `GET /health`. The request and answer shapes follow
//! OpenAI's API reference; the handling of a missing/ignored `model` and the `/health` slot
//! counts follow llama.cpp's `tools/server`. Every generation runs in one of `parallel` slots
//! with its own session (see [`generation`]); the server only converts types and calls the
//! engine.

pub mod error;
mod generation;
mod handlers;
pub mod request;
pub mod response;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use ember_engine::Engine;

pub use error::{ApiError, ServerError};
use generation::Slots;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Generations that run at once; further requests wait for a slot.
    pub parallel: usize,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The model id `/v1/models` lists and answers carry; default: the model file's stem.
    pub model_alias: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { parallel: 2, api_key: None, model_alias: None }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    engine: Arc<Engine>,
    slots: Slots,
    model_id: Arc<str>,
    api_key: Option<Arc<str>>,
    /// When the server started (seconds since the epoch), the model's `created`.
    started: u64,
}

/// The application: every endpoint, the API-key check and a JSON 404 for anything else.
pub fn router(engine: Arc<Engine>, options: &ServerOptions) -> Result<Router, ServerError> {
    if options.parallel == 0 {
        return Err(ServerError::Option { name: "parallel", problem: "must be at least 1".into() });
    }
    if options.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(ServerError::Option { name: "api-key", problem: "must not be empty".into() });
    }
    let model_id = match &options.model_alias {
        Some(alias) => alias.clone(),
        None => model_id(&engine),
    };
    let state = AppState {
        engine,
        slots: Slots::new(options.parallel),
        model_id: model_id.into(),
        api_key: options.api_key.as_deref().map(Arc::from),
        started: response::unix_now(),
    };
    let v1 = Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), handlers::require_key));
    Ok(Router::new()
        .merge(v1)
        .route("/health", get(handlers::health))
        .fallback(handlers::not_found)
        .with_state(state))
}

/// Serves until the process ends: binds `host:port` (port 0 picks a free one), calls
/// `on_listening` with the bound address, then answers requests.
pub fn run(
    engine: Arc<Engine>,
    options: &ServerOptions,
    host: &str,
    port: u16,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let app = router(engine, options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ember-serve")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(async {
        let bind_error = |source| ServerError::Bind { addr: format!("{host}:{port}"), source };
        let listener = tokio::net::TcpListener::bind((host, port)).await.map_err(bind_error)?;
        on_listening(listener.local_addr().map_err(bind_error)?);
        axum::serve(listener, app).await.map_err(ServerError::Serve)
    })
}

/// The id of the served model: its file's name without the extension.
fn model_id(engine: &Engine) -> String {
    let path = &engine.path;
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "ember".into())
}

/// A fresh random number (request ids, seeds of requests that give none).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}
