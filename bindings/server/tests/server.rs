//! The server's router driven in process (`tower::ServiceExt::oneshot`) over the default test
//! model: API key, bad requests, over-long prompts, `/v1/models`, `/health`, answers equal to the
//! engine's own greedy generation through a `Session` (the cross-path check), the SSE framing, a
//! queue of requests beyond the slots, and a client that goes away mid-stream.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use ember_engine::chat::Message;
use ember_engine::{Engine, EngineOptions, GenerationParams};
use ember_server::{router, ServerOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "sesame";

/// `$EMBER_TEST_MODEL`, else the default model in `$EMBER_HOME/models` / `~/.cache/ember/models`.
fn model_path() -> PathBuf {
    let path = match std::env::var_os("EMBER_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let models = match std::env::var_os("EMBER_HOME").filter(|h| !h.is_empty()) {
                Some(home) => PathBuf::from(home).join("models"),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ember/models"),
            };
            models.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(path.is_file(), "test model not found at {} (set EMBER_TEST_MODEL or run `ember pull`)", path.display());
    path
}

fn open(ctx: usize) -> Arc<Engine> {
    Arc::new(Engine::open(&model_path(), &EngineOptions { ctx: Some(ctx), threads: None, ..Default::default() }).expect("opening the test model"))
}

/// The engine most tests share (context 1024).
fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| open(1024)).clone()
}

fn app_with(engine: Arc<Engine>, parallel: usize) -> Router {
    let options = ServerOptions { parallel, api_key: Some(KEY.into()), model_alias: Some("smol".into()) };
    router(engine, &options).expect("a router")
}

fn app() -> Router {
    app_with(engine(), 2)
}

fn post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).header("authorization", format!("Bearer {KEY}")).body(Body::empty()).unwrap()
}

/// Status and body text of one request.
async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).expect("a UTF-8 body"))
}

async fn send_json(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, body) = send(app, request).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, v)
}

/// Checks an OpenAI-style error body and returns its message.
fn error_message(v: &Value, kind: &str) -> String {
    let e = &v["error"];
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"), "{v}");
    e["message"].as_str().expect("a message").to_string()
}

/// The engine's own greedy answer through a `Session`: text, prompt tokens, completion tokens.
fn session_greedy(engine: &Engine, prompt_text: &str, max_tokens: usize) -> (String, usize, usize) {
    let ids = engine.encode_prompt(prompt_text).unwrap();
    let mut session = engine.session();
    let mut gen = session.generate(&ids, &GenerationParams::greedy(max_tokens)).unwrap();
    let text: String = gen.by_ref().map(|p| p.unwrap().text).collect();
    let (p, n) = gen.usage();
    (text, p, n)
}

#[tokio::test]
async fn api_key_guards_v1_but_not_health() {
    let app = app();
    let no_key = Request::get("/v1/models").body(Body::empty()).unwrap();
    let (status, v) = send_json(&app, no_key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&v, "authentication_error").contains("Authorization"));
    let wrong = Request::post("/v1/completions").header("authorization", "Bearer nope").body(Body::from("{}")).unwrap();
    let (status, v) = send_json(&app, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let health = Request::get("/health").body(Body::empty()).unwrap();
    let (status, v) = send_json(&app, health).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"status": "ok", "slots": 2, "slots_busy": 0}));
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let (status, v) = send_json(&app(), get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], "smol");
    assert_eq!(v["data"][0]["object"], "model");
    // Without an alias, the id is the file's stem.
    let plain = router(engine(), &ServerOptions::default()).unwrap();
    let (_, v) = send_json(&plain, get("/v1/models")).await;
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
}

#[tokio::test]
async fn bad_requests_are_400_and_name_the_problem() {
    let app = app();
    let cases = [
        ("/v1/chat/completions", "{\"messages\": [", None, "not valid JSON"),
        ("/v1/chat/completions", r#"{"prompt": "hi"}"#, Some("messages"), "missing required field `messages`"),
        ("/v1/chat/completions", r#"{"messages": []}"#, Some("messages"), "at least one message"),
        ("/v1/chat/completions", r#"{"messages": [{"content": "hi"}]}"#, Some("messages"), "role"),
        ("/v1/chat/completions", r#"{"messages": "hi"}"#, Some("messages"), "invalid type"),
        ("/v1/completions", r#"{"messages": [{"role": "user", "content": "hi"}]}"#, Some("prompt"), "`prompt`"),
        ("/v1/completions", r#"{"prompt": "hi", "max_tokens": "ten"}"#, Some("max_tokens"), "max_tokens"),
        ("/v1/completions", r#"{"prompt": "hi", "temperature": "hot"}"#, Some("temperature"), "temperature"),
        ("/v1/completions", r#"{"prompt": "hi", "n": 2}"#, Some("n"), "not supported"),
        ("/v1/completions", r#"{"prompt": "hi", "top_p": 7, "stream": true}"#, Some("top_p"), "top_p"),
        ("/v1/completions", r#"{"prompt": ""}"#, Some("prompt"), "empty"),
    ];
    for (uri, body, param, needle) in cases {
        let (status, v) = send_json(&app, post(uri, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let message = error_message(&v, "invalid_request_error");
        assert!(message.contains(needle), "{body}: {message:?} lacks {needle:?}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body}: {v}");
    }
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(3 << 20));
    let (status, v) = send_json(&app, post("/v1/completions", &huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    error_message(&v, "invalid_request_error");
    let (status, v) = send_json(&app, get("/v1/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_message(&v, "invalid_request_error").contains("/v1/nothing"));
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400() {
    let app = app_with(open(32), 1);
    let long = "one two three four five six seven eight nine ten ".repeat(10);
    for stream in [false, true] {
        let body = json!({"prompt": long, "max_tokens": 4, "stream": stream}).to_string();
        let (status, v) = send_json(&app, post("/v1/completions", &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let message = error_message(&v, "invalid_request_error");
        assert!(message.contains("the context holds 32"), "{message}");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }
    let body = json!({"messages": [{"role": "user", "content": long}]}).to_string();
    let (status, _) = send_json(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A non-streaming greedy answer is the engine's own greedy generation, token counts included.
#[tokio::test]
async fn greedy_answers_equal_the_engines_session() {
    let app = app();
    let engine = engine();
    let prompt = "The capital of France is";
    let (text, p, n) = session_greedy(&engine, prompt, 16);
    let body = json!({"model": "anything", "prompt": prompt, "max_tokens": 16, "temperature": 0}).to_string();
    let (status, v) = send_json(&app, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "smol");
    assert_eq!(v["choices"][0]["text"], text.as_str());
    assert_eq!(v["usage"], json!({"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}));

    let messages = [Message::new("user", "List the three primary colors.")];
    let rendered = engine.render_chat(&messages).unwrap();
    let (text, p, n) = session_greedy(&engine, &rendered, 12);
    let body = json!({"messages": [{"role": "user", "content": "List the three primary colors."}],
                      "max_completion_tokens": 12, "temperature": 0, "tools": [], "user": "x"})
    .to_string();
    let (status, v) = send_json(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": text}));
    assert_eq!(v["usage"]["prompt_tokens"], p);
    assert_eq!(v["usage"]["completion_tokens"], n);
    let finish = if n == 12 { "length" } else { "stop" };
    assert_eq!(v["choices"][0]["finish_reason"], finish);
}

/// Splits an SSE body into its `data:` payloads, checking the framing.
fn sse_payloads(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "stream does not end with [DONE]: {body:?}");
    let frames: Vec<&str> = body.strip_suffix("\n\n").unwrap().split("\n\n").collect();
    frames
        .iter()
        .map(|f| f.strip_prefix("data: ").unwrap_or_else(|| panic!("frame without `data: `: {f:?}")).to_string())
        .collect()
}

#[tokio::test]
async fn streams_are_framed_like_openai() {
    let app = app();
    let messages = json!([{"role": "user", "content": "What is 2 + 2?"}]);
    let plain = json!({"messages": messages, "max_tokens": 10, "temperature": 0}).to_string();
    let (_, answer) = send_json(&app, post("/v1/chat/completions", &plain)).await;
    let streamed = json!({"messages": messages, "max_tokens": 10, "temperature": 0, "stream": true,
                          "stream_options": {"include_usage": true}})
    .to_string();
    let response = app.clone().oneshot(post("/v1/chat/completions", &streamed)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], answer["usage"]);
    let (last, _) = rest.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], answer["choices"][0]["finish_reason"]);
    assert!(rest[..rest.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null()));
    let joined: String = rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(joined, answer["choices"][0]["message"]["content"].as_str().unwrap());

    // Completions: `text_completion` chunks, no usage chunk unless asked.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "stream": true}).to_string();
    let (status, text) = send(&app, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK);
    let payloads = sse_payloads(&text);
    let chunks: Vec<Value> = payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion" && !c.as_object().unwrap().contains_key("usage")));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, session_greedy(&engine(), "Once upon a time", 6).0);
}

#[tokio::test]
async fn stop_strings_end_the_answer() {
    let app = app();
    let prompt = "1, 2, 3, 4, 5,";
    let (full, _, _) = session_greedy(&engine(), prompt, 12);
    let stop = full.trim_start().chars().take(2).collect::<String>();
    let cut = &full[..full.find(&stop).unwrap()];
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop, "zzz"]}).to_string();
    let (_, v) = send_json(&app, post("/v1/completions", &body)).await;
    assert_eq!(v["choices"][0]["text"], cut, "full answer {full:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

/// More requests than slots wait in line; each gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_slots_queue() {
    let app = app_with(engine(), 1);
    let prompts = ["Roses are red,", "The quick brown fox", "In the beginning"];
    let alone: Vec<String> = prompts.iter().map(|p| session_greedy(&engine(), p, 6).0).collect();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let app = app.clone();
            let body = json!({"prompt": p, "max_tokens": 6, "temperature": 0}).to_string();
            tokio::spawn(async move { send_json(&app, post("/v1/completions", &body)).await })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(alone) {
        let (status, v) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["choices"][0]["text"], expected.as_str());
    }
}

async fn slots_busy(app: &Router) -> u64 {
    send_json(app, get("/health")).await.1["slots_busy"].as_u64().unwrap()
}

/// A client that goes away mid-stream frees its slot at once: the generation is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_cancels_its_generation() {
    let app = app_with(engine(), 1);
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 100000, "ignore_eos": true, "stream": true})
        .to_string();
    let response = app.clone().oneshot(post("/v1/completions", &body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.into_body().into_data_stream();
    let first = frames.next().await.expect("a first frame").unwrap();
    assert!(first.starts_with(b"data: {"));
    assert_eq!(slots_busy(&app).await, 1);
    drop(frames);
    let t0 = Instant::now();
    while slots_busy(&app).await != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the slot is still busy 5 s after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quick = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let answer = tokio::time::timeout(Duration::from_secs(20), send_json(&app, post("/v1/completions", &quick)));
    assert_eq!(answer.await.expect("the next request is answered").0, StatusCode::OK);
}
