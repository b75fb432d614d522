//! Chat-template tests: the SmolLM2 GGUF template renders the reference's chat prompts exactly,
//! multi-turn history, the functions and filters Hugging Face templates use, and clear errors.

#[path = "common/tokenizer_util.rs"]
mod tokenizer_util;

use std::path::Path;

use ember_engine::chat::{strftime, ChatTemplate, Message};
use ember_engine::gguf::{GgufFile, GgufWriter, MetaValue};
use ember_engine::tokenizer::Tokenizer;
use ember_engine::EngineError;
use tokenizer_util::{ids, qwen_path, reference, smollm_path, text};

fn template_of(path: &Path) -> (ChatTemplate, Tokenizer) {
    let g = GgufFile::open(path).expect("open GGUF");
    let template = ChatTemplate::from_gguf(&g).expect("valid template").expect("the GGUF has a chat template");
    (template, Tokenizer::from_gguf(&g).expect("tokenizer"))
}

/// Each chat prompt of greedy.json: rendering the user text gives `prompt_text` exactly (the
/// template's default system prompt included), and it tokenizes to `prompt_ids`.
fn check_reference_chat(path: &Path, model: &str) {
    let (template, tok) = template_of(path);
    let greedy = reference(model, "greedy.json");
    let chats: Vec<_> = greedy["prompts"].as_array().unwrap().iter().filter(|p| p["kind"] == "chat").collect();
    assert!(!chats.is_empty(), "{model}: no chat prompts in greedy.json");
    for p in chats {
        let rendered = template.render(&[Message::new("user", text(&p["user_text"]))], true).expect("render");
        assert_eq!(rendered, text(&p["prompt_text"]), "{model}");
        assert_eq!(tok.encode(&rendered, tok.add_bos).unwrap(), ids(&p["prompt_ids"]), "{model}");
    }
}

#[test]
fn smollm_template_renders_reference_chat_prompts() {
    check_reference_chat(&smollm_path(), "smollm2-135m");
}

#[test]
fn qwen_template_renders_reference_chat_prompts_when_present() {
    if let Some(path) = qwen_path("qwen_template_renders_reference_chat_prompts_when_present") {
        check_reference_chat(&path, "qwen2.5-coder-0.5b");
    }
}

#[test]
fn smollm_template_renders_multi_turn_history() {
    let (template, _) = template_of(&smollm_path());
    let history =
        [Message::new("user", "Hi"), Message::new("assistant", "Hello!"), Message::new("user", "How are you?")];
    assert_eq!(
        template.render(&history, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
    );
    // A system message of its own replaces the default one; no generation prompt.
    let with_system = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
    assert_eq!(
        template.render(&with_system, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

fn gguf_with_template(dir: &Path, source: &str) -> GgufFile {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("tokenizer.ggml.tokens", MetaValue::strings(&["<unk>", "<s>", "</s>"]))
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .meta("tokenizer.chat_template", MetaValue::String(source.into()));
    let path = dir.join("chat.gguf");
    w.write(&path).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn template_environment_matches_transformers() {
    let source =
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\
        {{ m.content.strip() }}{{ eos_token }}{% if loop.index == 2 %}{% break %}{% endif %}{% endfor %}\
        |{{ messages[0] | tojson }}|{{ {'b': [1, 2.5, none, true], 'a': 'é\"'} | tojson }}\
        |{{ {'x': [1], 'y': {}} | tojson(indent=2) }}|{{ strftime_now('%Y') | length }}|{{ undefined_var }}|\n";
    let dir = tempfile::tempdir().unwrap();
    let template = ChatTemplate::from_gguf(&gguf_with_template(dir.path(), source)).unwrap().unwrap();
    let messages = [Message::new("user", " hi "), Message::new("assistant", "yo"), Message::new("user", "more")];
    assert_eq!(
        template.render(&messages, false).unwrap(),
        "<s>hi</s>yo</s>|{\"role\": \"user\", \"content\": \" hi \"}|{\"b\": [1, 2.5, null, true], \"a\": \"é\\\"\"}\
         |{\n  \"x\": [\n    1\n  ],\n  \"y\": {}\n}|4||"
    );
    let e = template.render(&[Message::new("tool", "x")], false).unwrap_err();
    assert!(matches!(e, EngineError::Template(_)) && e.to_string().contains("no tools"), "{e}");
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let source =
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(source, "", "").unwrap();
    assert_eq!(t.render(&[Message::new("user", "a"), Message::new("user", "b")], false).unwrap(), "[a]\n[b]\n");
}

#[test]
fn strftime_formats_like_python() {
    assert_eq!(strftime(0, "%d %b %Y"), "01 Jan 1970");
    assert_eq!(strftime(1_721_952_000, "%A %d %B %Y, day %j, %H:%M:%S %%"), "Friday 26 July 2024, day 208, 00:00:00 %");
    assert_eq!(strftime(1_709_210_096, "%Y-%m-%d %I %p %-d"), "2024-02-29 12 PM 29");
}

#[test]
fn broken_template_is_a_clear_error() {
    let e = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    let msg = e.to_string();
    eprintln!("error as reported: {msg}");
    assert!(matches!(e, EngineError::Template(_)), "{msg}");
    assert!(msg.contains("syntax error"), "minijinja's message is kept: {msg}");
    let dir = tempfile::tempdir().unwrap();
    let e = ChatTemplate::from_gguf(&gguf_with_template(dir.path(), "{% if %}")).unwrap_err().to_string();
    assert!(e.contains("chat.gguf") && e.contains("tokenizer.chat_template"), "{e}");
}

#[test]
fn gguf_without_template_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.gguf");
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()));
    w.write(&path).unwrap();
    assert!(ChatTemplate::from_gguf(&GgufFile::open(&path).unwrap()).unwrap().is_none());
}

#[test]
fn hf_folder_templates() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_hf_folder(dir.path()).unwrap().is_none(), "no template anywhere");

    std::fs::write(dir.path().join("chat_template.jinja"), "J{{ messages[0].content }}{{ eos_token }}").unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
    let t = ChatTemplate::from_hf_folder(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], true).unwrap(), "Jx</s>");

    let config = r#"{"bos_token": {"content": "<s>", "lstrip": false},
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}]}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let t = ChatTemplate::from_hf_folder(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[], true).unwrap(), "D<s>");

    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": "{% endfor %}"}"#).unwrap();
    let e = ChatTemplate::from_hf_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json"), "{e}");
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": 5}"#).unwrap();
    let e = ChatTemplate::from_hf_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("chat_template") && e.contains("tokenizer_config.json"), "{e}");
}
