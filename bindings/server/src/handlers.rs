//! The endpoints: each parses a request, converts it to engine types, runs a generation in a
//! slot and converts what comes back. No model logic lives here.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember_engine::Event;
use serde_json::json;

use crate::error::ApiError;
use crate::generation::{ended_early, Events};
use crate::request::{GenerateRequest, PromptInput};
use crate::response::{sse, Endpoint, Meta, SSE_DONE};
use crate::{random_u64, AppState};

pub async fn chat(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(state, Endpoint::Chat, body).await
}

pub async fn completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(state, Endpoint::Completion, body).await
}

async fn answer(state: AppState, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let result = match body {
        Ok(body) => generate(state, endpoint, &body).await,
        // An unreadable or too large body (axum's limit is 2 MiB).
        Err(r) => Err(ApiError { status: r.status(), ..ApiError::bad_request(r.body_text(), None) }),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn models(State(state): State<AppState>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{ "id": &*state.model_id, "object": "model", "created": state.started, "owned_by": "ember" }],
    }))
    .into_response()
}

/// `{"status": "ok", "slots": N, "slots_busy": n}`; never needs the API key.
pub async fn health(State(state): State<AppState>) -> Response {
    Json(json!({ "status": "ok", "slots": state.slots.size(), "slots_busy": state.slots.busy() })).into_response()
}

pub async fn not_found(request: Request) -> Response {
    ApiError::not_found(format!("no endpoint {} {}", request.method(), request.uri().path())).into_response()
}

/// Lets a request through only with `Authorization: Bearer <key>` when the server has a key.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = given.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match token {
            None => {
                return ApiError::unauthorized("missing API key: send the header `Authorization: Bearer <key>`")
                    .into_response()
            }
            Some(t) if !same_secret(t.as_bytes(), key.as_bytes()) => {
                return ApiError::unauthorized("incorrect API key provided").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn generate(state: AppState, endpoint: Endpoint, body: &[u8]) -> Result<Response, ApiError> {
    let request = GenerateRequest::parse(body)?;
    let engine = &state.engine;
    let prompt = match endpoint {
        Endpoint::Chat => {
            let text = engine.render_chat(&request.chat_messages()?).map_err(|e| ApiError::from_engine(&e))?;
            engine.encode_prompt(&text).map_err(|e| ApiError::from_engine(&e))?
        }
        Endpoint::Completion => match request.completion_prompt()? {
            PromptInput::Text(text) => engine.encode_prompt(&text).map_err(|e| ApiError::from_engine(&e))?,
            PromptInput::Tokens(ids) => ids,
        },
    };
    let params = request.params(engine.ctx(), random_u64())?;
    let meta = Meta::new(endpoint, &state.model_id, random_u64());
    let events = Events::start(engine.clone(), &state.slots, prompt, params).await?;
    if request.streaming() {
        stream(meta, events, request.include_usage()).await
    } else {
        let (text, done) = events.collect().await?;
        Ok(Json(meta.answer(&text, &done)).into_response())
    }
}

/// A streamed answer. The first event is awaited before answering, so a request the engine
/// refuses (a prompt longer than the context, a parameter out of range) gets its 400 instead
/// of a stream; later errors end the stream with an `{"error": …}` event.
async fn stream(meta: Meta, mut events: Events, include_usage: bool) -> Result<Response, ApiError> {
    let first = events.next().await.ok_or_else(ended_early)?;
    if let Event::Error(e) = &first {
        return Err(ApiError::from_engine(e));
    }
    let mut body = SseBody { meta, events, include_usage, frames: VecDeque::new(), ended: false };
    if body.meta.endpoint == Endpoint::Chat {
        let role = body.meta.chunk(true, Some(""), None, include_usage);
        body.frames.push_back(sse(&role));
    }
    body.push(first);
    let frames = futures_util::stream::unfold(body, |mut b| async move {
        b.next_frame().await.map(|frame| (Ok::<_, Infallible>(Bytes::from(frame)), b))
    });
    let headers = [(CONTENT_TYPE, "text/event-stream"), (CACHE_CONTROL, "no-cache")];
    Ok((headers, Body::from_stream(frames)).into_response())
}

/// The frames of one streamed answer. Dropped with the response body when the client goes
/// away, which drops `events` and so cancels the generation.
struct SseBody {
    meta: Meta,
    events: Events,
    include_usage: bool,
    frames: VecDeque<String>,
    ended: bool,
}

impl SseBody {
    async fn next_frame(&mut self) -> Option<String> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            match self.events.next().await {
                Some(ev) => self.push(ev),
                None => {
                    self.frames.push_back(sse(&ended_early().body()));
                    self.ended = true;
                }
            }
        }
    }

    fn push(&mut self, ev: Event) {
        let m = &self.meta;
        match ev {
            Event::Piece(p) if p.text.is_empty() => {}
            Event::Piece(p) => self.frames.push_back(sse(&m.chunk(false, Some(&p.text), None, self.include_usage))),
            Event::Done(done) => {
                let text = (m.endpoint == Endpoint::Completion).then_some("");
                self.frames.push_back(sse(&m.chunk(false, text, Some(done.finish.openai()), self.include_usage)));
                if self.include_usage {
                    self.frames.push_back(sse(&m.usage_chunk(&done)));
                }
                self.frames.push_back(SSE_DONE.to_string());
                self.ended = true;
            }
            Event::Error(e) => {
                self.frames.push_back(sse(&ApiError::from_engine(&e).body()));
                self.ended = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_whole() {
        assert!(super::same_secret(b"key", b"key"));
        assert!(!super::same_secret(b"key", b"kez"));
        assert!(!super::same_secret(b"key", b"key2"));
    }
}
