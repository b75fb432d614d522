//! Generation on its own thread ([`Stream`]) against the in-thread [`Session`] iterator on the
//! real default model: same tokens, same usage, prompt errors as events, cancellation that ends
//! the stream promptly, and an engine with its own thread pool.

#[path = "common/tokenizer_util.rs"]
mod tokenizer_util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_engine::generate::Overflow;
use ember_engine::{Engine, EngineError, EngineOptions, Event, FinishReason, GenerationParams, Stream};

const PROMPT: &str = "The capital of France is";

fn engine(threads: Option<usize>) -> Arc<Engine> {
    let path = tokenizer_util::smollm_path();
    Arc::new(Engine::open(&path, &EngineOptions { ctx: Some(256), threads, ..Default::default() }).expect("the model opens"))
}

fn in_thread(e: &Engine, prompt: &[u32], params: &GenerationParams) -> (Vec<u32>, String, (usize, usize)) {
    let mut session = e.session();
    let mut gen = session.generate(prompt, params).expect("generation starts");
    let (mut tokens, mut text) = (Vec::new(), String::new());
    for piece in gen.by_ref() {
        let piece = piece.expect("a piece");
        tokens.push(piece.token);
        text.push_str(&piece.text);
    }
    (tokens, text, gen.usage())
}

#[test]
fn stream_yields_what_the_session_iterator_yields() {
    let e = engine(None);
    let prompt = e.encode_prompt(PROMPT).unwrap();
    let params = GenerationParams { stop_at_eos: false, ..GenerationParams::greedy(24) };
    let (tokens, text, usage) = in_thread(&e, &prompt, &params);
    let (mut s_tokens, mut s_text, mut done) = (Vec::new(), String::new(), None);
    for ev in Stream::spawn(e.clone(), prompt.clone(), params) {
        match ev {
            Event::Piece(p) => {
                s_tokens.push(p.token);
                s_text.push_str(&p.text);
            }
            Event::Done(d) => done = Some(d),
            Event::Error(err) => panic!("unexpected error: {err}"),
        }
    }
    let done = done.expect("a Done event ends the stream");
    assert_eq!(s_tokens, tokens);
    assert_eq!(s_text, text);
    assert_eq!((done.prompt_tokens, done.completion_tokens), usage);
    assert_eq!(done.completion_tokens, 24);
    assert_eq!(done.finish, FinishReason::Length);
}

#[test]
fn prompt_over_the_context_is_an_error_event() {
    let e = engine(None);
    let prompt = vec![e.tokenizer.bos.unwrap_or(1); 300];
    let params = GenerationParams { overflow: Overflow::Error, ..GenerationParams::greedy(4) };
    match Stream::spawn(e, prompt, params).collect_text() {
        Err(EngineError::ContextOverflow { prompt: 300, ctx: 256 }) => {}
        other => panic!("expected a context overflow, got {other:?}"),
    }
}

#[test]
fn cancel_ends_the_stream_at_the_next_token() {
    let e = engine(None);
    let prompt = e.encode_prompt(PROMPT).unwrap();
    let params = GenerationParams { stop_at_eos: false, ..GenerationParams::greedy(200) };
    let mut stream = Stream::spawn(e.clone(), prompt, params);
    let mut pieces = 0;
    while pieces < 3 {
        match stream.next() {
            Some(Event::Piece(_)) => pieces += 1,
            other => panic!("expected pieces, got {other:?}"),
        }
    }
    stream.cancel();
    let t0 = Instant::now();
    let rest = stream.by_ref().count();
    // The thread may have buffered some pieces ahead of the reader, never the whole answer.
    assert!(rest < 200 - 3, "{rest} more events after cancel");
    assert!(t0.elapsed() < Duration::from_secs(30));
    drop(stream);
    // Dropping joined the thread: the engine is shared by nobody else now.
    assert_eq!(Arc::strong_count(&e), 1);
}

#[test]
fn an_engine_with_its_own_pool_gives_the_same_tokens() {
    let one = engine(Some(1));
    assert_eq!(one.threads(), 1);
    let shared = engine(None);
    let prompt = shared.encode_prompt(PROMPT).unwrap();
    let params = GenerationParams { stop_at_eos: false, ..GenerationParams::greedy(16) };
    assert_eq!(in_thread(&one, &prompt, &params).0, in_thread(&shared, &prompt, &params).0);
    let zero = Engine::open(&tokenizer_util::smollm_path(), &EngineOptions { ctx: None, threads: Some(0), ..Default::default() });
    assert!(matches!(zero, Err(EngineError::Param { name: "threads", .. })));
}

/// Lines of this process's memory map that map `path`.
fn mappings_of(path: &std::path::Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let name = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    maps.lines().filter(|l| l.ends_with(name.to_str().unwrap_or("?"))).count()
}

#[test]
#[cfg(target_os = "linux")]
fn dropping_the_engine_unmaps_the_model() {
    // A private copy, so other tests' engines on the shared file do not count.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.gguf");
    std::fs::copy(tokenizer_util::smollm_path(), &copy).unwrap();
    let e = Arc::new(Engine::open(&copy, &EngineOptions::default()).expect("the model opens"));
    assert!(mappings_of(&copy) > 0, "the weights are memory-mapped");
    let prompt = e.encode_prompt(PROMPT).unwrap();
    let stream = Stream::spawn(e.clone(), prompt, GenerationParams::greedy(4));
    drop(stream);
    drop(e);
    assert_eq!(mappings_of(&copy), 0, "the model file is still mapped after the engine was dropped");
}
