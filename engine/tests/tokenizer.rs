//! Tokenizer tests: exact token ids against the reference (Hugging Face transformers on the
//! GGUF's own vocabulary, which llama.cpp agrees with), decoding, streaming, a synthetic
//! SentencePiece vocabulary with hand-checked ids, and malformed files.

#[path = "common/tokenizer_util.rs"]
mod tokenizer_util;

use std::path::Path;
use std::time::Instant;

use ember_engine::gguf::{GgufFile, GgufWriter, MetaValue};
use ember_engine::tokenizer::Tokenizer;
use ember_engine::EngineError;
use tokenizer_util::{data_dir, ids, qwen_path, reference, smollm_path, text};

fn open(path: &Path) -> Tokenizer {
    let g = GgufFile::open(path).expect("open GGUF");
    Tokenizer::from_gguf(&g).expect("tokenizer from GGUF")
}

/// Every reference prompt (plain and chat-templated) tokenizes to the reference ids.
fn check_prompts(tok: &Tokenizer, model: &str) {
    let greedy = reference(model, "greedy.json");
    let prompts = greedy["prompts"].as_array().expect("prompts");
    assert!(!prompts.is_empty());
    for p in prompts {
        let got = tok.encode(text(&p["prompt_text"]), tok.add_bos).expect("encode");
        assert_eq!(got, ids(&p["prompt_ids"]), "{model}: prompt {:?}", text(&p["prompt_text"]));
    }
}

/// Generated ids decode to the reference text, and streaming gives the same text.
fn check_decode(tok: &Tokenizer, model: &str) {
    let greedy = reference(model, "greedy.json");
    for p in greedy["prompts"].as_array().expect("prompts") {
        let gen = ids(&p["generated_ids"]);
        assert_eq!(tok.decode(&gen).expect("decode"), text(&p["generated_text"]), "{model}: {:?}", p["prompt_text"]);
        assert_eq!(streamed(tok, &gen), text(&p["generated_text"]));
    }
}

/// The WikiText passage of logits.json: its text encodes to its ids, and they decode back.
fn check_passage(tok: &Tokenizer, model: &str) {
    let logits = reference(model, "logits.json");
    let passage = &logits["wikitext_passage"];
    let expected = ids(&passage["ids"]);
    assert_eq!(tok.encode(text(&passage["text"]), false).expect("encode"), expected, "{model}: WikiText passage");
    assert_eq!(tok.decode(&expected).expect("decode"), text(&passage["text"]));
    let prompt0 = &logits["prompt0"];
    assert_eq!(tok.encode(text(&prompt0["text"]), false).expect("encode"), ids(&prompt0["ids"]));
}

/// The whole WikiText-2 test file, tokenized at once without BOS, has the reference count.
fn check_wikitext_count(tok: &Tokenizer, model: &str) {
    let expected = reference(model, "ppl.json")["wikitext"]["n_tokens_in_file"].as_u64().expect("n_tokens_in_file");
    let file = data_dir().join("wikitext-2-tokens-test.txt");
    let corpus = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let start = Instant::now();
    let got = tok.encode(&corpus, false).expect("encode WikiText");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{model}: encoded {} bytes into {} tokens in {secs:.2} s", corpus.len(), got.len());
    assert_eq!(got.len() as u64, expected, "{model}: WikiText token count");
    assert!(secs < 30.0, "{model}: encoding WikiText took {secs:.1} s");
}

fn streamed(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = tok.stream();
    let mut out = String::new();
    for &id in ids {
        out += &stream.push(id).expect("push");
    }
    out += &stream.finish().expect("finish");
    out
}

#[test]
fn smollm_prompt_ids_match_reference() {
    let tok = open(&smollm_path());
    assert!(!tok.add_bos, "SmolLM2's GGUF says add_bos_token = false");
    check_prompts(&tok, "smollm2-135m");
}

#[test]
fn smollm_wikitext_passage_ids_match_reference() {
    check_passage(&open(&smollm_path()), "smollm2-135m");
}

#[test]
fn smollm_wikitext_token_count_matches_reference() {
    check_wikitext_count(&open(&smollm_path()), "smollm2-135m");
}

#[test]
fn smollm_generated_ids_decode_to_reference_text() {
    check_decode(&open(&smollm_path()), "smollm2-135m");
}

#[test]
fn smollm_special_tokens_and_end_of_generation() {
    let tok = open(&smollm_path());
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    assert_eq!(tok.encode("<|im_start|>user\n", false).unwrap(), vec![1, 4093, 198]);
    assert_eq!(tok.encode("hi", true).unwrap()[0], 1, "BOS is prepended on request");
    assert!(tok.is_end_of_generation(2), "<|im_end|> (EOS)");
    assert!(tok.is_end_of_generation(0), "<|endoftext|>");
    assert!(!tok.is_end_of_generation(1), "<|im_start|>");
    assert!(!tok.is_end_of_generation(198), "newline");
    assert_eq!(tok.token_text(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert!(tok.decode(&[49152]).is_err(), "an id past the vocabulary is an error");
}

#[test]
fn smollm_stream_equals_full_decode() {
    let tok = open(&smollm_path());
    // Multi-byte characters split over several byte-level tokens.
    let text = "Café déjà vu — 東京で 🙂🚀 naïve\n\t<|im_end|> ok";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() > text.chars().count() / 2);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(streamed(&tok, &ids), text);
    // No piece is ever a broken character.
    let mut stream = tok.stream();
    for &id in &ids {
        assert!(!stream.push(id).unwrap().contains('\u{FFFD}'));
    }
    // Streaming after a prompt gives the same pieces as decoding prompt + generation.
    let prompt = tok.encode("The capital of France is", false).unwrap();
    let gen = tok.encode(" Paris. 🙂", false).unwrap();
    let mut stream = tok.stream_after(&prompt);
    let out: String = gen.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(out, " Paris. 🙂");
}

#[test]
fn qwen_matches_reference_when_present() {
    let Some(path) = qwen_path("qwen_matches_reference_when_present") else { return };
    let tok = open(&path);
    assert!(!tok.add_bos);
    check_prompts(&tok, "qwen2.5-coder-0.5b");
    check_passage(&tok, "qwen2.5-coder-0.5b");
    check_decode(&tok, "qwen2.5-coder-0.5b");
    assert!(tok.is_end_of_generation(151645), "<|im_end|>");
    assert!(tok.is_end_of_generation(151643), "<|endoftext|>");
    check_wikitext_count(&tok, "qwen2.5-coder-0.5b");
}

// ---- a synthetic SentencePiece vocabulary -------------------------------------------------

/// (piece, token type, score): unknown=2, control=3, normal=1, byte=6.
const SPM_VOCAB: &[(&str, i32, f32)] = &[
    ("<unk>", 2, 0.0),   // 0
    ("<s>", 3, 0.0),     // 1
    ("</s>", 3, 0.0),    // 2
    ("<0x0A>", 6, 0.0),  // 3
    ("<0xC3>", 6, 0.0),  // 4
    ("<0xA9>", 6, 0.0),  // 5
    ("▁", 1, -5.0),      // 6
    ("h", 1, -6.0),      // 7
    ("e", 1, -6.0),      // 8
    ("l", 1, -6.0),      // 9
    ("o", 1, -6.0),      // 10
    ("w", 1, -6.0),      // 11
    ("r", 1, -6.0),      // 12
    ("d", 1, -6.0),      // 13
    ("he", 1, -3.0),     // 14
    ("ll", 1, -2.0),     // 15
    ("llo", 1, -2.5),    // 16
    ("▁h", 1, -4.0),     // 17
    ("▁he", 1, -1.5),    // 18
    ("hello", 1, -1.0),  // 19
    ("▁hello", 1, -0.5), // 20
    ("▁w", 1, -4.0),     // 21
    ("or", 1, -3.5),     // 22
    ("▁wor", 1, -3.0),   // 23
    ("ld", 1, -3.8),     // 24
    ("▁world", 1, -0.8), // 25
    ("<|x|>", 3, 0.0),   // 26
];

fn write_gguf(dir: &Path, name: &str, meta: Vec<(&str, MetaValue)>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in meta {
        w.meta(k, v);
    }
    let path = dir.join(name);
    w.write(&path).expect("write GGUF");
    GgufFile::open(&path).expect("open GGUF")
}

fn spm_meta() -> Vec<(&'static str, MetaValue)> {
    let pieces: Vec<&str> = SPM_VOCAB.iter().map(|t| t.0).collect();
    vec![
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens", MetaValue::strings(&pieces)),
        (
            "tokenizer.ggml.token_type",
            MetaValue::array(&MetaValue::I32(0), SPM_VOCAB.iter().map(|t| MetaValue::I32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            MetaValue::array(&MetaValue::F32(0.0), SPM_VOCAB.iter().map(|t| MetaValue::F32(t.2)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
    ]
}

#[test]
fn sentencepiece_synthetic_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_gguf(&write_gguf(dir.path(), "spm.gguf", spm_meta())).expect("SPM tokenizer");
    assert!(tok.add_bos, "llama.cpp adds BOS for SentencePiece vocabularies by default");
    // "▁hello▁world": ll, llo, he, hello, ▁hello, then or, ld, ▁w, ▁wor, ▁world (highest score first).
    assert_eq!(tok.encode("hello world", false).unwrap(), vec![20, 25]);
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![1, 20, 25]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![20]);
    // "▁he" stays when "llo" does not follow; lone letters stay letters.
    assert_eq!(tok.encode("he", false).unwrap(), vec![18]);
    assert_eq!(tok.encode("world", false).unwrap(), vec![25]);
    assert_eq!(tok.encode("wold", false).unwrap(), vec![21, 10, 24]);
    // Byte fallback: "\n" and "é" (C3 A9) have no piece; 'q' has neither piece nor byte token.
    assert_eq!(tok.encode("\n", false).unwrap(), vec![6, 3]);
    assert_eq!(tok.encode("é", false).unwrap(), vec![6, 4, 5]);
    assert_eq!(tok.encode("q", false).unwrap(), vec![6, 0]);
    // Control tokens in the text are single tokens; text after one gets its own space prefix.
    assert_eq!(tok.encode("<s>hello", false).unwrap(), vec![1, 20]);
    assert_eq!(tok.encode("hello<|x|> world", false).unwrap(), vec![20, 26, 6, 25]);
    // Decoding: ▁ is a space, bytes are fused, the leading space of the text is dropped.
    assert_eq!(tok.decode(&[20, 25]).unwrap(), "hello world");
    assert_eq!(tok.decode(&[6, 4, 5, 6, 3]).unwrap(), "é \n");
    assert_eq!(streamed(&tok, &[20, 25, 6, 4, 5, 3]), "hello world é\n");
    let mut s = tok.stream_after(&[20]);
    assert_eq!(s.push(25).unwrap(), " world");
    assert!(tok.is_end_of_generation(2));
    assert!(!tok.is_end_of_generation(1));
}

// ---- malformed files ----------------------------------------------------------------------

fn gguf_error(meta: Vec<(&str, MetaValue)>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let g = write_gguf(dir.path(), "bad.gguf", meta);
    match Tokenizer::from_gguf(&g) {
        Ok(_) => panic!("a malformed vocabulary was accepted"),
        Err(e) => {
            eprintln!("error as reported: {e}");
            e.to_string()
        }
    }
}

fn bpe_meta(tokens: &[&str], merges: &[&str]) -> Vec<(&'static str, MetaValue)> {
    vec![
        ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", MetaValue::strings(tokens)),
        ("tokenizer.ggml.merges", MetaValue::strings(merges)),
    ]
}

#[test]
fn missing_tokens_array_is_a_clear_error() {
    let e = gguf_error(vec![("tokenizer.ggml.model", MetaValue::String("gpt2".into()))]);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("bad.gguf"), "{e}");
}

#[test]
fn unknown_tokenizer_model_is_a_clear_error() {
    let mut meta = bpe_meta(&["a"], &[]);
    meta[0].1 = MetaValue::String("bert".into());
    let e = gguf_error(meta);
    assert!(e.contains("`bert`") && e.contains("bad.gguf"), "{e}");
}

#[test]
fn merge_with_unknown_token_is_a_clear_error() {
    let e = gguf_error(bpe_meta(&["a", "b", "ab"], &["a b", "a c"]));
    assert!(e.contains("tokenizer.ggml.merges") && e.contains("`c`"), "{e}");
    let e = gguf_error(bpe_meta(&["a", "b"], &["a b"]));
    assert!(e.contains("`ab`"), "the merged token must exist too: {e}");
    let e = gguf_error(bpe_meta(&["a", "b", "ab"], &["ab"]));
    assert!(e.contains("merge 0"), "{e}");
}

#[test]
fn unknown_pre_tokenizer_is_a_clear_error() {
    let mut meta = bpe_meta(&["a", "b", "ab"], &["a b"]);
    meta[1].1 = MetaValue::String("no-such-pre".into());
    let e = gguf_error(meta);
    assert!(e.contains("no-such-pre") && e.contains("tokenizer.ggml.pre"), "{e}");
}

#[test]
fn missing_pre_tokenizer_falls_back_like_llama_cpp_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = bpe_meta(&["a", "b", "ab", "Ġ"], &["a b"]);
    meta.remove(1);
    let tok = Tokenizer::from_gguf(&write_gguf(dir.path(), "nopre.gguf", meta)).expect("tokenizer");
    assert_eq!(tok.notes().len(), 1, "{:?}", tok.notes());
    assert_eq!(tok.encode("ab ab", false).unwrap(), vec![2, 3, 2]);
}

#[test]
fn inconsistent_arrays_are_clear_errors() {
    let mut meta = bpe_meta(&["a", "b", "ab"], &["a b"]);
    meta.push(("tokenizer.ggml.token_type", MetaValue::array(&MetaValue::I32(0), vec![MetaValue::I32(1)])));
    let e = gguf_error(meta);
    assert!(e.contains("tokenizer.ggml.token_type") && e.contains("1 entries"), "{e}");
    let mut meta = bpe_meta(&["a", "b", "ab"], &["a b"]);
    meta.push(("tokenizer.ggml.eos_token_id", MetaValue::U32(7)));
    let e = gguf_error(meta);
    assert!(e.contains("eos_token_id"), "{e}");
    let mut meta = spm_meta();
    meta.retain(|(k, _)| *k != "tokenizer.ggml.scores");
    let e = gguf_error(meta);
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");
}

// ---- Hugging Face folders -----------------------------------------------------------------

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {"<s>": 0, "</s>": 1, "h": 2, "i": 3, "hi": 4, "Ġ": 5, "Ġhi": 6},
            "merges": ["h i", "Ġ hi"]}
}"#;

#[test]
fn hf_folder_with_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>"}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_folder(dir.path()).expect("HF tokenizer");
    assert_eq!((tok.bos, tok.eos, tok.add_bos), (Some(0), Some(1), true));
    assert_eq!(tok.encode("hi hi", tok.add_bos).unwrap(), vec![0, 4, 6]);
    assert_eq!(tok.encode("hi</s>", false).unwrap(), vec![4, 1]);
    assert_eq!(tok.decode(&[4, 6]).unwrap(), "hi hi");
    assert_eq!(tok.vocab_size(), 7);
    assert!(tok.is_end_of_generation(1));
}

#[test]
fn hf_folder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_hf_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let e = Tokenizer::from_hf_folder(dir.path()).unwrap_err();
    assert!(matches!(e, EngineError::Tokenizer(_)) && e.to_string().contains("tokenizer.json"), "{e}");
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "[1,").unwrap();
    let e = Tokenizer::from_hf_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json"), "{e}");
}
