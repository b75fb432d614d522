//! Bad models and bad requests at the engine level: small GGUF models written with
//! [`GgufWriter`], each broken in one way, must fail [`Engine::open`] with a message naming the
//! file and the field or tensor — never a panic, never a huge allocation (a tracking global
//! allocator records the largest single allocation made while opening). Then the
//! real model with bad requests (prompt longer than the context, zero context, token ids outside
//! the vocabulary). Last, a tiny random-weight model checked against a naive f64 forward pass
//! written here from the llama equations: batched prefill equals token-by-token decoding, and
//! `llama.activation_function = "relu"` is honoured.

#[path = "common/tokenizer_util.rs"]
mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use ember_engine::generate::{GenerationParams, Overflow};
use ember_engine::gguf::{GgufWriter, MetaValue};
use ember_engine::model::Logits;
use ember_engine::{Activation, Engine, EngineError, EngineOptions};
use ember_kernels::DType;

// ---------------------------------------------------------------------------------------------
// No huge allocations: each test thread records the largest single allocation it asked for, and
// opening a bad model must stay under `MAX_ALLOCATION` (a broken header must not make the
// loader reserve memory for what the file claims). Above `HARD_CAP` the allocation is refused,
// which aborts the test binary loudly instead of exhausting the machine.

const MAX_ALLOCATION: usize = 256 << 20;
const HARD_CAP: usize = 8 << 30;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

struct TrackingAllocator;

unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        if new_size > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

/// Runs `f`, failing when it made any single allocation over `MAX_ALLOCATION` on this thread.
#[track_caller]
fn without_huge_allocations<T>(what: &str, f: impl FnOnce() -> T) -> T {
    LARGEST.with(|c| c.set(0));
    let out = f();
    let largest = LARGEST.with(|c| c.get());
    assert!(largest <= MAX_ALLOCATION, "{what}: one allocation of {largest} bytes (over {MAX_ALLOCATION})");
    out
}

// ---------------------------------------------------------------------------------------------
// A tiny llama, as metadata and f32 tensors that a test may change before writing it.

#[derive(Clone, Copy)]
struct Dims {
    dim: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    layers: usize,
    vocab: usize,
}

const TINY: Dims = Dims { dim: 64, ffn: 96, heads: 4, kv_heads: 2, layers: 2, vocab: 300 };
const EPS: f32 = 1e-5;
const THETA: f32 = 10_000.0;

#[derive(Clone)]
struct Tiny {
    dims: Dims,
    meta: Vec<(String, MetaValue)>,
    /// name, ggml dims (innermost first), row-major data.
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Deterministic uniform numbers in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// A small byte-level BPE vocabulary: "a", "b", "ab" (one merge), then filler tokens.
fn tiny_vocab(n: usize) -> Vec<String> {
    let mut v: Vec<String> = ["a", "b", "ab"].iter().map(|s| s.to_string()).collect();
    v.extend((3..n).map(|i| format!("t{i}")));
    v
}

impl Tiny {
    fn new(d: Dims, seed: u64) -> Tiny {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let hd = d.dim / d.heads;
        let (q_dim, kv_dim) = (d.heads * hd, d.kv_heads * hd);
        let meta = vec![
            ("general.architecture".to_string(), MetaValue::String("llama".into())),
            ("general.name".into(), MetaValue::String("tiny random llama".into())),
            ("llama.context_length".into(), MetaValue::U32(64)),
            ("llama.embedding_length".into(), MetaValue::U32(d.dim as u32)),
            ("llama.feed_forward_length".into(), MetaValue::U32(d.ffn as u32)),
            ("llama.block_count".into(), MetaValue::U32(d.layers as u32)),
            ("llama.attention.head_count".into(), MetaValue::U32(d.heads as u32)),
            ("llama.attention.head_count_kv".into(), MetaValue::U32(d.kv_heads as u32)),
            ("llama.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(EPS)),
            ("llama.rope.freq_base".into(), MetaValue::F32(THETA)),
            ("tokenizer.ggml.model".into(), MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), MetaValue::String("gpt-2".into())),
            ("tokenizer.ggml.tokens".into(), MetaValue::strings(&tiny_vocab(d.vocab))),
            ("tokenizer.ggml.merges".into(), MetaValue::strings(&["a b"])),
        ];
        // (name, rows, cols, kind): matrices scaled by 1/sqrt(cols); norms near 1.
        let mut tensors = Vec::new();
        let mut mat = |name: String, rows: usize, cols: usize, rng: &mut Rng| {
            let scale = 1.0 / (cols as f32).sqrt();
            tensors.push((name, vec![cols, rows], rng.vec(rows * cols, scale * 1.7, 0.0)));
        };
        mat("token_embd.weight".into(), d.vocab, d.dim, &mut rng);
        for l in 0..d.layers {
            mat(format!("blk.{l}.attn_q.weight"), q_dim, d.dim, &mut rng);
            mat(format!("blk.{l}.attn_k.weight"), kv_dim, d.dim, &mut rng);
            mat(format!("blk.{l}.attn_v.weight"), kv_dim, d.dim, &mut rng);
            mat(format!("blk.{l}.attn_output.weight"), d.dim, q_dim, &mut rng);
            mat(format!("blk.{l}.ffn_gate.weight"), d.ffn, d.dim, &mut rng);
            mat(format!("blk.{l}.ffn_up.weight"), d.ffn, d.dim, &mut rng);
            mat(format!("blk.{l}.ffn_down.weight"), d.dim, d.ffn, &mut rng);
        }
        for l in 0..d.layers {
            for norm in ["attn_norm", "ffn_norm"] {
                tensors.push((format!("blk.{l}.{norm}.weight"), vec![d.dim], rng.vec(d.dim, 0.2, 1.0)));
            }
        }
        tensors.push(("output_norm.weight".into(), vec![d.dim], rng.vec(d.dim, 0.2, 1.0)));
        Tiny { dims: d, meta, tensors }
    }

    fn set(&mut self, key: &str, value: MetaValue) -> &mut Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.meta.push((key.to_string(), value)),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        let before = self.meta.len();
        self.meta.retain(|(k, _)| k != key);
        assert_eq!(self.meta.len() + 1, before, "no metadata key {key}");
        self
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        let before = self.tensors.len();
        self.tensors.retain(|(n, _, _)| n != name);
        assert_eq!(self.tensors.len() + 1, before, "no tensor {name}");
        self
    }

    /// Replaces a tensor's dims (ggml order) and data.
    fn reshape_tensor(&mut self, name: &str, dims: &[usize]) -> &mut Self {
        let t = self.tensors.iter_mut().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}"));
        t.1 = dims.to_vec();
        t.2 = vec![0.5; dims.iter().product()];
        self
    }

    fn weight(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).2
    }

    fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.meta(k, v.clone());
        }
        for (name, dims, data) in &self.tensors {
            w.tensor(name, dims, DType::F32, data.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
        w
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        self.writer().write(&path).expect("writing the test model");
        path
    }
}

fn open(path: &Path) -> Engine {
    match Engine::open(path, &EngineOptions::default()) {
        Ok(e) => e,
        Err(e) => panic!("{} should open: {e}", path.display()),
    }
}

/// `Engine::open` must fail with a message naming the file and containing every needle.
#[track_caller]
fn expect_open_err(path: &Path, needles: &[&str]) -> EngineError {
    let result = without_huge_allocations(&format!("opening {}", path.display()), || Engine::open(path, &EngineOptions::default()).map(|_| ()));
    let err = match result {
        Ok(()) => panic!("{} opened; expected an error containing {needles:?}", path.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "the message must name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in: {msg}");
    }
    err
}

/// Writes `t` and expects `Engine::open` to fail with all of `needles`.
#[track_caller]
fn broken(t: &Tiny, needles: &[&str]) -> EngineError {
    let dir = tempfile::tempdir().unwrap();
    let path = t.write(dir.path(), "broken.gguf");
    expect_open_err(&path, needles)
}

// ---------------------------------------------------------------------------------------------
// The unbroken tiny model opens: the failures below are the breakage's, not the base's.

#[test]
fn tiny_model_opens() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&Tiny::new(TINY, 1).write(dir.path(), "tiny.gguf"));
    let c = e.config();
    assert_eq!((c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim, c.n_layers, c.vocab_size), (64, 96, 4, 2, 16, 2, 300));
    assert_eq!(c.activation, Activation::Silu);
    assert_eq!(e.ctx(), 64);
    assert_eq!(e.tokenizer.encode("ab", false).unwrap(), vec![2]);
}

// ---------------------------------------------------------------------------------------------
// Metadata.

#[test]
fn unknown_architecture_is_named() {
    let mut t = Tiny::new(TINY, 1);
    t.set("general.architecture", MetaValue::String("gptneox".into()));
    let e = broken(&t, &["gptneox"]);
    assert!(matches!(e, EngineError::UnknownArchitecture { ref arch, .. } if arch == "gptneox"), "{e:?}");
    // Not a string at all.
    let mut t = Tiny::new(TINY, 1);
    t.set("general.architecture", MetaValue::U32(7));
    broken(&t, &["general.architecture"]);
}

#[test]
fn missing_required_metadata_is_named() {
    for key in [
        "general.architecture",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.context_length",
        "llama.attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.model",
        "tokenizer.ggml.merges",
    ] {
        let mut t = Tiny::new(TINY, 1);
        t.remove(key);
        broken(&t, &[key]);
    }
}

#[test]
fn absurd_sizes_are_rejected_before_allocating() {
    let cases: Vec<(&str, MetaValue, &[&str])> = vec![
        ("llama.block_count", MetaValue::U64(1_000_000_000), &["block_count", "1000000000"]),
        ("llama.block_count", MetaValue::U32(0), &["block_count"]),
        ("llama.block_count", MetaValue::I32(-3), &["block_count"]),
        ("llama.block_count", MetaValue::String("two".into()), &["block_count"]),
        ("llama.attention.head_count", MetaValue::U32(0), &["head_count"]),
        ("llama.attention.head_count_kv", MetaValue::U32(3), &["head_count_kv", "3"]),
        ("llama.attention.head_count_kv", MetaValue::U32(0), &["head_count_kv"]),
        ("llama.embedding_length", MetaValue::U64(1 << 40), &["embedding_length"]),
        ("llama.embedding_length", MetaValue::U32(0), &["embedding_length"]),
        ("llama.feed_forward_length", MetaValue::U64(u64::MAX), &["feed_forward_length"]),
        ("llama.attention.key_length", MetaValue::U32(15), &["key_length"]),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(-1.0), &["rms"]),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(f32::NAN), &["rms"]),
        ("llama.rope.freq_base", MetaValue::F32(0.0), &["rope"]),
        ("llama.vocab_size", MetaValue::U64(1 << 40), &["vocab_size"]),
        ("llama.activation_function", MetaValue::String("swish-glu-9000".into()), &["llama.activation_function", "swish-glu-9000"]),
        ("llama.rope.scaling.type", MetaValue::String("yarn-ish".into()), &["rope.scaling.type", "yarn-ish"]),
    ];
    for (key, value, needles) in cases {
        let mut t = Tiny::new(TINY, 1);
        t.set(key, value.clone());
        let e = broken(&t, needles);
        eprintln!("{key} = {value:?}: {e}");
    }
}

/// Without `llama.vocab_size`, the vocabulary size comes from `tokenizer.ggml.tokens`; when that
/// is missing too, the message should say so.
#[test]
fn missing_vocabulary_is_named() {
    let mut t = Tiny::new(TINY, 1);
    t.remove("tokenizer.ggml.tokens");
    broken(&t, &["tokenizer.ggml.tokens"]);
}

/// A file claiming the most layers the config check lets through, but holding two, fails on
/// the first missing tensor without first reserving room for a million layers.
#[test]
fn many_claimed_layers_fail_on_the_first_missing_one() {
    let mut t = Tiny::new(TINY, 1);
    t.set("llama.block_count", MetaValue::U32(1 << 20));
    let e = broken(&t, &["blk.2."]);
    assert!(matches!(e, EngineError::MissingTensor { .. }), "{e:?}");
}

#[test]
fn tokenizer_metadata_problems_are_named() {
    let mut t = Tiny::new(TINY, 1);
    t.set("tokenizer.ggml.model", MetaValue::String("wordpiece".into()));
    broken(&t, &["tokenizer.ggml.model", "wordpiece"]);
    let mut t = Tiny::new(TINY, 1);
    t.set("tokenizer.ggml.merges", MetaValue::strings(&["a zz"]));
    broken(&t, &["tokenizer.ggml.merges", "zz"]);
    let mut t = Tiny::new(TINY, 1);
    t.set("tokenizer.ggml.eos_token_id", MetaValue::U32(100_000));
    broken(&t, &["tokenizer.ggml.eos_token_id"]);
    // More tokens than embedding rows.
    let mut t = Tiny::new(TINY, 1);
    t.set("tokenizer.ggml.tokens", MetaValue::strings(&tiny_vocab(TINY.vocab + 5)));
    t.set("llama.vocab_size", MetaValue::U32(TINY.vocab as u32));
    broken(&t, &["vocab"]);
}

// ---------------------------------------------------------------------------------------------
// Tensors.

#[test]
fn missing_tensor_is_named() {
    for name in ["blk.1.ffn_down.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight", "token_embd.weight", "output_norm.weight"] {
        let mut t = Tiny::new(TINY, 1);
        t.remove_tensor(name);
        let e = broken(&t, &[name]);
        assert!(matches!(e, EngineError::MissingTensor { .. }), "{name}: {e:?}");
    }
}

#[test]
fn tensor_with_the_wrong_shape_is_named() {
    let d = TINY;
    let hd = d.dim / d.heads;
    // ggml dims (innermost first): a PyTorch (rows, cols) matrix is [cols, rows].
    let cases: Vec<(&str, Vec<usize>)> = vec![
        ("blk.0.attn_q.weight", vec![d.dim, d.heads * hd + 16]),
        ("blk.1.attn_k.weight", vec![d.dim, d.heads * hd]), // kv heads taken for query heads
        ("blk.0.ffn_down.weight", vec![d.dim, d.ffn]),      // transposed
        ("blk.1.ffn_up.weight", vec![d.dim * d.ffn]),       // flattened
        ("blk.0.attn_norm.weight", vec![d.dim + 1]),
        ("token_embd.weight", vec![d.dim, d.vocab - 1]),
        ("blk.0.ffn_gate.weight", vec![d.dim, d.ffn, 1, 2]),
    ];
    for (name, dims) in cases {
        let mut t = Tiny::new(TINY, 1);
        t.reshape_tensor(name, &dims);
        let e = broken(&t, &[name]);
        assert!(matches!(e, EngineError::TensorShape { .. }), "{name} {dims:?}: {e:?}");
    }
    // A tied output that is not, and an explicit output matrix of the wrong shape.
    let mut t = Tiny::new(TINY, 1);
    t.tensors.push(("output.weight".into(), vec![d.dim, d.vocab + 3], vec![0.1; d.dim * (d.vocab + 3)]));
    broken(&t, &["output.weight"]);
}

/// Finds tensor `name`'s header entry in `bytes` and sets its ggml type id.
fn patch_type(bytes: &mut [u8], name: &str, type_id: u32) {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap_or_else(|| panic!("{name} not in the file"));
    let mut p = at + key.len();
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p += 4 + 8 * n_dims;
    assert_eq!(u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()), DType::F32 as u32, "the type field of {name}");
    bytes[p..p + 4].copy_from_slice(&type_id.to_le_bytes());
}

#[test]
fn tensor_of_an_unsupported_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = Tiny::new(TINY, 1).writer().to_bytes();
    for (type_id, format) in [(20u32, "IQ4_NL"), (16, "IQ2_XXS"), (28, "F64"), (9, "Q8_1"), (999, "999")] {
        let mut bytes = good.clone();
        patch_type(&mut bytes, "blk.1.ffn_up.weight", type_id);
        let path = dir.path().join(format!("type-{type_id}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let e = expect_open_err(&path, &["blk.1.ffn_up.weight", format]);
        assert!(matches!(e, EngineError::UnknownTensorFormat { .. }), "type {type_id}: {e:?}");
    }
    // A file cut inside the last tensor's data: truncated, and the tensor named.
    let cut = good.len() - 64;
    let path = dir.path().join("cut.gguf");
    std::fs::write(&path, &good[..cut]).unwrap();
    expect_open_err(&path, &["truncated", "output_norm.weight"]);
}

// ---------------------------------------------------------------------------------------------
// The real model, asked for impossible things.

fn greedy(max_tokens: usize, overflow: Overflow) -> GenerationParams {
    GenerationParams { stop_at_eos: false, overflow, ..GenerationParams::greedy(max_tokens) }
}

/// The first `n` tokens of the WikiText test text.
fn prompt_tokens(e: &Engine, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(util::data_dir().join("wikitext-2-tokens-test.txt")).unwrap();
    let head: String = text.chars().take(2000).collect();
    let ids = e.encode_prompt(&head).unwrap();
    assert!(ids.len() >= n);
    ids[..n].to_vec()
}

#[test]
fn prompt_longer_than_the_context_is_a_context_overflow() {
    let e = match Engine::open(&util::smollm_path(), &EngineOptions { ctx: Some(16), ..Default::default() }) {
        Ok(e) => e,
        Err(err) => panic!("the model opens: {err}"),
    };
    assert_eq!(e.ctx(), 16);
    let prompt = prompt_tokens(&e, 40);
    let mut session = e.session();
    match session.generate(&prompt, &greedy(4, Overflow::Error)) {
        Err(EngineError::ContextOverflow { prompt: 40, ctx: 16 }) => {}
        Err(other) => panic!("expected ContextOverflow {{ prompt: 40, ctx: 16 }}, got {other:?}"),
        Ok(_) => panic!("a 40-token prompt was accepted by a 16-token context"),
    }
    // Exactly the context is also too long: no room for an answer.
    assert!(matches!(session.generate(&prompt[..16], &greedy(4, Overflow::Error)), Err(EngineError::ContextOverflow { .. })));

    // Truncation keeps the end of the prompt and answers within the context.
    let pieces: Vec<_> = session.generate(&prompt, &greedy(4, Overflow::TruncateStart)).unwrap().collect::<Result<_, _>>().unwrap();
    assert!(!pieces.is_empty() && pieces.len() <= 4);
    assert!(session.tokens().len() <= 16);

    // Generation that reaches the end of the context stops there (no error, no panic).
    let mut session = e.session();
    let mut gen = session.generate(&prompt[..10], &greedy(100, Overflow::Error)).unwrap();
    let n = gen.by_ref().map(|p| p.unwrap()).count();
    assert!(n <= 16 - 10 + 1, "{n} tokens generated in a context of 16 after 10 prompt tokens");
    assert_eq!(gen.finish_reason(), Some(ember_engine::generate::FinishReason::ContextFull));

    // The model refuses to run past its cache.
    let mut cache = e.model.new_cache(e.ctx());
    assert!(matches!(e.model.forward(&prompt[..17], &mut cache, Logits::Last), Err(EngineError::ContextOverflow { .. })));
    e.model.forward(&prompt[..16], &mut cache, Logits::Last).unwrap();
    assert!(matches!(e.model.forward(&prompt[..1], &mut cache, Logits::Last), Err(EngineError::ContextOverflow { .. })));
}

#[test]
fn zero_context_is_an_error() {
    match Engine::open(&util::smollm_path(), &EngineOptions { ctx: Some(0), ..Default::default() }) {
        Ok(_) => panic!("ctx 0 was accepted"),
        Err(e) => assert!(e.to_string().contains("ctx"), "{e}"),
    }
    // An empty prompt is refused too.
    let e = open(&util::smollm_path());
    let mut session = e.session();
    assert!(matches!(session.generate(&[], &greedy(4, Overflow::Error)), Err(EngineError::Param { .. })));
}

#[test]
fn token_ids_outside_the_vocabulary_are_an_error() {
    let e = open(&util::smollm_path());
    let vocab = e.config().vocab_size as u32;
    let mut cache = e.model.new_cache(e.ctx());
    for bad in [vocab, vocab + 1, u32::MAX] {
        let err = match e.model.forward(&[1, bad], &mut cache, Logits::Last) {
            Ok(_) => panic!("token id {bad} was accepted (vocabulary {vocab})"),
            Err(err) => err,
        };
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
        assert_eq!(cache.len(), 0, "a failed forward must leave the cache as it was");
    }
    // The cache is still usable, the last id is fine, and no tokens is an error.
    assert_eq!(e.model.forward(&[vocab - 1], &mut cache, Logits::Last).unwrap().len(), vocab as usize);
    assert!(e.model.forward(&[], &mut cache, Logits::Last).is_err());
    // Through a session as well.
    let mut session = e.session();
    let mut gen = session.generate(&[1, vocab], &greedy(2, Overflow::Error)).unwrap();
    assert!(matches!(gen.next(), Some(Err(_))));
}

// ---------------------------------------------------------------------------------------------
// A tiny random model against a naive forward pass.

/// The llama forward pass, written from the equations in f64, one position at a time:
/// RMSNorm; Q/K/V; RoPE on adjacent pairs (2i, 2i+1) — llama GGUF files — with
/// θ_i = base^(-2i/head_dim); causal grouped-query softmax attention; output projection;
/// residual; RMSNorm; down(act(gate) ⊙ up); residual; final RMSNorm; tied embedding as output.
/// Returns `(n, vocab)` logits.
fn naive_forward(t: &Tiny, tokens: &[u32], relu: bool) -> Vec<Vec<f64>> {
    let d = t.dims;
    let hd = d.dim / d.heads;
    let group = d.heads / d.kv_heads;
    let w = |name: &str| -> Vec<f64> { t.weight(name).iter().map(|x| *x as f64).collect() };
    let matvec = |m: &[f64], x: &[f64]| -> Vec<f64> { m.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect() };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + EPS as f64).sqrt();
        x.iter().zip(g).map(|(v, g)| v * s * g).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for head in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f64 * (THETA as f64).powf(-((2 * i) as f64) / hd as f64);
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * a.cos() - x1 * a.sin();
                head[2 * i + 1] = x0 * a.sin() + x1 * a.cos();
            }
        }
    };
    let embed = w("token_embd.weight");
    let mut keys: Vec<Vec<Vec<f64>>> = vec![Vec::new(); d.layers]; // layer → position → (kv_dim)
    let mut values: Vec<Vec<Vec<f64>>> = vec![Vec::new(); d.layers];
    let mut out = Vec::new();
    for (pos, tok) in tokens.iter().enumerate() {
        let mut x: Vec<f64> = embed[*tok as usize * d.dim..(*tok as usize + 1) * d.dim].to_vec();
        for l in 0..d.layers {
            let p = |s: &str| w(&format!("blk.{l}.{s}.weight"));
            let h = norm(&x, &p("attn_norm"));
            let mut q = matvec(&p("attn_q"), &h);
            let mut k = matvec(&p("attn_k"), &h);
            let v = matvec(&p("attn_v"), &h);
            rope(&mut q, pos);
            rope(&mut k, pos);
            keys[l].push(k);
            values[l].push(v);
            let mut o = vec![0.0; d.heads * hd];
            for head in 0..d.heads {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f64> = keys[l]
                    .iter()
                    .map(|k| qh.iter().zip(&k[kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (s, v) in scores.iter().zip(&values[l]) {
                    for j in 0..hd {
                        o[head * hd + j] += (s - max).exp() / z * v[kvh * hd + j];
                    }
                }
            }
            for (xi, a) in x.iter_mut().zip(matvec(&p("attn_output"), &o)) {
                *xi += a;
            }
            let h = norm(&x, &p("ffn_norm"));
            let gate = matvec(&p("ffn_gate"), &h);
            let up = matvec(&p("ffn_up"), &h);
            let act: Vec<f64> =
                gate.iter().zip(&up).map(|(g, u)| if relu { g.max(0.0) * u } else { g / (1.0 + (-g).exp()) * u }).collect();
            for (xi, f) in x.iter_mut().zip(matvec(&p("ffn_down"), &act)) {
                *xi += f;
            }
        }
        let h = norm(&x, &w("output_norm.weight"));
        out.push(matvec(&embed, &h));
    }
    out
}

/// Ember's logits for `tokens` in one batch, and one token at a time.
fn batched_and_stepwise(e: &Engine, tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut cache = e.model.new_cache(e.ctx());
    let batched = e.model.forward(tokens, &mut cache, Logits::All).unwrap().to_vec();
    let mut cache = e.model.new_cache(e.ctx());
    let stepwise: Vec<f32> = tokens.iter().flat_map(|t| e.model.forward(&[*t], &mut cache, Logits::Last).unwrap().to_vec()).collect();
    (batched, stepwise)
}

const TOKENS: [u32; 11] = [5, 2, 299, 0, 17, 17, 42, 1, 250, 3, 128];

#[test]
fn tiny_model_batched_prefill_equals_stepwise_decoding_and_the_naive_forward() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::new(TINY, 7);
    let e = open(&t.write(dir.path(), "tiny.gguf"));
    let vocab = TINY.vocab;
    let (batched, stepwise) = batched_and_stepwise(&e, &TOKENS);
    assert_eq!(batched.len(), TOKENS.len() * vocab);
    let diff = util::max_abs_diff(&batched, &stepwise);
    assert!(diff < 1e-4, "batched vs token-by-token logits differ by {diff}");

    let naive: Vec<f32> = naive_forward(&t, &TOKENS, false).into_iter().flatten().map(|x| x as f32).collect();
    let scale = naive.iter().map(|x| x.abs()).fold(0.0, f32::max);
    let diff = util::max_abs_diff(&batched, &naive);
    eprintln!("silu: logits up to {scale:.3}; Ember vs naive f64 forward: {diff:e}");
    assert!(scale > 0.5, "degenerate test model: logits all near zero");
    assert!(diff < 1e-3, "Ember vs naive forward: {diff}");

    // A prefix shared with a previous call is reused: generating after a longer prompt that
    // starts with the same tokens gives the same logits as a fresh cache.
    let mut cache = e.model.new_cache(e.ctx());
    e.model.forward(&TOKENS[..6], &mut cache, Logits::Last).unwrap();
    let rest = e.model.forward(&TOKENS[6..], &mut cache, Logits::All).unwrap().to_vec();
    let diff = util::max_abs_diff(&rest, &batched[6 * vocab..]);
    assert!(diff < 1e-4, "prefill in two chunks differs by {diff}");
}

#[test]
fn tiny_model_relu_activation_is_accepted_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let silu = Tiny::new(TINY, 7);
    let mut relu = silu.clone();
    relu.set("llama.activation_function", MetaValue::String("relu".into()));
    let e_silu = open(&silu.write(dir.path(), "silu.gguf"));
    let e_relu = open(&relu.write(dir.path(), "relu.gguf"));
    assert_eq!(e_relu.config().activation, Activation::Relu);

    let (batched, stepwise) = batched_and_stepwise(&e_relu, &TOKENS);
    let diff = util::max_abs_diff(&batched, &stepwise);
    assert!(diff < 1e-4, "relu: batched vs token-by-token logits differ by {diff}");
    let naive: Vec<f32> = naive_forward(&relu, &TOKENS, true).into_iter().flatten().map(|x| x as f32).collect();
    let diff = util::max_abs_diff(&batched, &naive);
    assert!(diff < 1e-3, "relu: Ember vs naive forward: {diff}");

    let (silu_logits, _) = batched_and_stepwise(&e_silu, &TOKENS);
    let change = util::max_abs_diff(&batched, &silu_logits);
    assert!(change > 1e-2, "the activation changed the logits by only {change}");

    // "silu" spelled out is the default, and gelu is accepted.
    let mut explicit = silu.clone();
    explicit.set("llama.activation_function", MetaValue::String("silu".into()));
    let (explicit_logits, _) = batched_and_stepwise(&open(&explicit.write(dir.path(), "explicit.gguf")), &TOKENS);
    assert_eq!(explicit_logits, silu_logits);
    let mut gelu = silu.clone();
    gelu.set("llama.activation_function", MetaValue::String("gelu".into()));
    assert_eq!(open(&gelu.write(dir.path(), "gelu.gguf")).config().activation, Activation::Gelu);
}

#[test]
fn tiny_model_generates_through_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::new(TINY, 3);
    let e = open(&t.write(dir.path(), "tiny.gguf"));
    // Greedy generation picks the argmax of the naive logits at each step.
    let mut session = e.session();
    let got: Vec<u32> = session.generate(&TOKENS[..4], &greedy(5, Overflow::Error)).unwrap().map(|p| p.unwrap().token).collect();
    assert_eq!(got.len(), 5);
    let mut seq = TOKENS[..4].to_vec();
    for (step, tok) in got.iter().enumerate() {
        let logits = naive_forward(&t, &seq, false).pop().unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        if logits[order[0]] - logits[order[1]] < 1e-3 {
            eprintln!("step {step}: near tie, stopping the comparison");
            break;
        }
        assert_eq!(*tok as usize, order[0], "step {step}");
        seq.push(*tok);
    }
    // A context of 64 holds a long generation up to its end.
    let mut session = e.session();
    let mut gen = session.generate(&TOKENS, &greedy(1000, Overflow::Error)).unwrap();
    let n = gen.by_ref().map(|p| p.unwrap()).count();
    assert!(n <= 64 - TOKENS.len() + 1, "{n}");
}
