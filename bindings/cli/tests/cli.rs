//! The `ember` binary, driven as a user drives it: `run`, `chat`, `batch`, `perplexity`, `info`,
//! `pull --list`, and bad input. Expectations come from outside the CLI: the float32 reference
//! figures in `shared/reference/smollm2-135m` (transformers on the same GGUF weights), the GGUF's
//! own token strings decoded here byte by byte, and `ember run` itself where the point is that
//! two faces agree (batch vs run).
//!
//! Ember's matrix products use 8-bit activations (as llama.cpp's do), so a greedy answer may
//! legitimately leave the float32 reference at a near-tie: a step whose reference top-1/top-2
//! logit margin is below `NEAR_TIE`. Against the reference, only the text of the steps before the
//! first near-tie (the "firm" steps) must agree, as in `engine/tests/golden.rs`; two Ember runs on
//! the same input must agree exactly.
//!
//! Every process runs with `EMBER_OFFLINE=1` (nothing is downloaded) and the test model given
//! through `EMBER_MODEL` or `--model`. Every call checks that nothing panicked.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ember_engine::gguf::GgufFile;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Where things are.

/// The default test model: `$EMBER_TEST_MODEL`, else `$EMBER_HOME/models` / `~/.cache/ember/models`.
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
    assert!(
        path.is_file(),
        "test model not found at {} (set EMBER_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF, or run `ember pull`)",
        path.display()
    );
    path
}

/// `$var`, else `/work/shared/<name>`, else `shared/<name>` in the repository.
fn shared_dir(var: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return PathBuf::from(dir);
    }
    let candidates = [Path::new("/work/shared").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared").join(name)];
    match candidates.iter().find(|d| d.is_dir()) {
        Some(d) => d.clone(),
        None => panic!("{name} folder not found (looked in {candidates:?}); set {var}"),
    }
}

fn reference(file: &str) -> Value {
    let path = shared_dir("EMBER_REFERENCE_DIR", "reference").join("smollm2-135m").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The reference entry for the prompt whose user text is `user_text`.
fn reference_prompt(user_text: &str) -> Value {
    let r = reference("greedy.json");
    r["prompts"].as_array().unwrap().iter().find(|p| p["user_text"] == user_text).cloned().unwrap_or_else(|| panic!("no reference prompt {user_text:?}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// Reference steps whose top-2 logits are closer than this may legitimately flip.
const NEAR_TIE: f64 = 0.5;

/// How many steps of a reference greedy continuation come before its first near-tie.
fn firm_steps(p: &Value) -> usize {
    let margins = p["top1_minus_top2_logit_margin"].as_array().expect("reference margins");
    margins.iter().position(|m| m.as_f64().expect("a margin") < NEAR_TIE).unwrap_or(margins.len())
}

// ---------------------------------------------------------------------------------------------
// An independent decoder: the GGUF's token strings (GPT-2 byte-level alphabet) mapped back to bytes.

/// GPT-2's `bytes_to_unicode`, inverted: char → byte.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter().zip(&cs).map(|(b, c)| (char::from_u32(*c).unwrap(), *b as u8)).collect()
}

/// The text of `token_ids` under the model's vocabulary (plain byte-level tokens only).
fn decode_independently(token_ids: &[u32]) -> String {
    let g = GgufFile::open(model_path()).expect("the test model's header reads");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").expect("the model has a vocabulary");
    let alphabet = byte_level_alphabet();
    let mut bytes = Vec::new();
    for id in token_ids {
        for c in tokens[*id as usize].chars() {
            bytes.push(*alphabet.get(&c).unwrap_or_else(|| panic!("token {id} {:?} is not byte-level text", tokens[*id as usize])));
        }
    }
    String::from_utf8(bytes).expect("UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "ember failed\n--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr);
        self
    }
    #[track_caller]
    fn fails(self) -> Out {
        assert!(self.code.is_some() && self.code != Some(0), "ember should have failed\n--- stdout:\n{}\n--- stderr:\n{}", self.stdout, self.stderr);
        self
    }
}

fn ember_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.env("EMBER_MODEL", model_path()).env("EMBER_OFFLINE", "1").env_remove("EMBER_QUIET").stdin(Stdio::null());
    c
}

/// Runs the command, feeding `stdin` when given; a panic (message or exit code 101) fails the test.
#[track_caller]
fn run_cmd(mut c: Command, stdin: Option<&str>) -> Out {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("ember starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
        drop(pipe); // Ctrl-D
    }
    let o = child.wait_with_output().expect("ember runs");
    let out = Out {
        code: o.status.code(),
        stdout: String::from_utf8(o.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !out.stderr.contains("panicked") && out.code != Some(101) && out.code.is_some(),
        "ember panicked or was killed (exit {:?})\n--- stderr:\n{}",
        out.code,
        out.stderr
    );
    out
}

#[track_caller]
fn ember(args: &[&str]) -> Out {
    let mut c = ember_cmd();
    c.args(args);
    run_cmd(c, None)
}

#[track_caller]
fn ember_stdin(args: &[&str], stdin: &str) -> Out {
    let mut c = ember_cmd();
    c.args(args);
    run_cmd(c, Some(stdin))
}

/// Plain prompt: 5 firm steps (" Paris.\n\nThe"), then a near-tie.
const FRANCE: &str = "The capital of France is";
/// Chat prompt: 8 firm steps ("The primary colors are:\n\nRed"). ("What is the capital of
/// France?" has none: its first step is a near-tie.)
const COLORS_Q: &str = "List three primary colors.";
/// Chat prompt not in the reference (Ember's answer is only compared with Ember's).
const HELLO_Q: &str = "Say hello.";

/// The text of the reference's firm greedy tokens for `user_text`, decoded independently from the
/// GGUF vocabulary.
fn reference_firm_text(user_text: &str) -> String {
    let p = reference_prompt(user_text);
    let firm = firm_steps(&p);
    assert!(firm > 0, "{user_text:?}: the reference has no firm step");
    let text = decode_independently(&ids(&p["generated_ids"])[..firm]);
    assert!(p["generated_text"].as_str().unwrap().starts_with(&text), "independent decode {text:?} vs reference text");
    text
}

/// The greedy chat answer to `COLORS_Q` starts with the reference's firm text.
#[track_caller]
fn assert_colors_answer(answer: &str) {
    let firm = reference_firm_text(COLORS_Q);
    assert!(answer.starts_with(&firm), "the answer {answer:?} should start with the reference's firm text {firm:?}");
}

/// `ember run --raw` greedy, as a user would run it.
fn run_greedy_raw(prompt: &str, max_tokens: usize) -> String {
    ember(&["run", "--raw", "--temperature", "0", "--max-tokens", &max_tokens.to_string(), prompt]).ok().stdout
}

// ---------------------------------------------------------------------------------------------
// run

#[test]
fn run_greedy_prints_the_reference_continuation_and_nothing_else_on_stdout() {
    // The five firm steps, all of them: the whole output must be the reference's.
    let expected = reference_firm_text(FRANCE);
    assert_eq!(firm_steps(&reference_prompt(FRANCE)), 5);
    assert_eq!(expected, " Paris.\n\nThe");

    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "5", FRANCE]).ok();
    assert_eq!(out.stdout, format!("{expected}\n"), "stdout must hold the answer only; stderr was:\n{}", out.stderr);
    // Logs went to stderr.
    assert!(!out.stderr.trim().is_empty(), "expected the load/usage log on stderr");

    // Greedy is deterministic, whatever the seed.
    let again = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "5", "--seed", "12345", FRANCE]).ok();
    assert_eq!(again.stdout, out.stdout);

    // The prompt may come from stdin.
    let piped = ember_stdin(&["run", "--raw", "--temperature", "0", "--max-tokens", "5"], FRANCE).ok();
    assert_eq!(piped.stdout, out.stdout);

    // EMBER_QUIET silences the log, not the answer.
    let mut c = ember_cmd();
    c.args(["run", "--raw", "--temperature", "0", "--max-tokens", "5", FRANCE]).env("EMBER_QUIET", "1");
    let quiet = run_cmd(c, None).ok();
    assert_eq!(quiet.stdout, out.stdout);
}

#[test]
fn run_sampling_is_reproducible_with_a_seed() {
    let sample = |seed: &str| {
        ember(&["run", "--raw", "--temperature", "1.0", "--top-k", "0", "--top-p", "1.0", "--min-p", "0", "--max-tokens", "12", "--seed", seed, "Once upon a time"])
            .ok()
            .stdout
    };
    let a = sample("42");
    assert_eq!(sample("42"), a, "the same seed must give the same text");
    assert!(a.ends_with('\n') && a.len() > 1);
    // With temperature 1 over the full vocabulary, five seeds all agreeing on 12 tokens is
    // practically impossible.
    let others: Vec<String> = ["1", "2", "3", "7", "99"].iter().map(|s| sample(s)).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds always gave {a:?}");
}

#[test]
fn run_stop_string_cuts_the_output_before_it() {
    // Every stop string here ends within the firm steps (" Paris.\n\nThe"), so generation stops
    // before any step that may differ from the reference; without the stop, 8 tokens would come.
    let full = reference_firm_text(FRANCE);
    assert_eq!(full, " Paris.\n\nThe");
    let cut = &full[..full.find("The").unwrap()];
    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "8", "--stop", "The", FRANCE]).ok();
    assert_eq!(out.stdout, format!("{cut}\n"));
    // A stop string spanning tokens (".\n\nThe") is also found.
    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "8", "--stop", ".\n\nThe", FRANCE]).ok();
    assert_eq!(out.stdout, " Paris\n");
    // Several stop strings: the earliest wins.
    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "8", "--stop", "The", "--stop", ".", FRANCE]).ok();
    assert_eq!(out.stdout, " Paris\n");
}

#[test]
fn run_applies_the_chat_template_unless_raw() {
    assert_eq!(reference_firm_text(COLORS_Q), "The primary colors are:\n\nRed");
    let out = ember(&["run", "--temperature", "0", "--max-tokens", "24", COLORS_Q]).ok();
    assert_colors_answer(&out.stdout);
    let answer = out.stdout;

    // --raw sends the text as it is: the reference's rendered chat prompt, sent raw, gets the
    // same answer; the bare question sent raw does not.
    let rendered = reference_prompt(COLORS_Q)["prompt_text"].as_str().unwrap().to_string();
    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "24", &rendered]).ok();
    assert_eq!(out.stdout, answer);
    let raw = run_greedy_raw(COLORS_Q, 24);
    assert_ne!(raw, answer, "--raw must skip the chat template");
    assert!(!raw.starts_with(&reference_firm_text(COLORS_Q)), "--raw must skip the chat template: {raw:?}");
}

#[test]
fn run_prompt_longer_than_the_context_fails_clearly_unless_truncate() {
    let long = [FRANCE; 12].join(" "); // about 60 tokens
    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "4", "--ctx", "16", &long]).fails();
    assert!(out.stderr.to_lowercase().contains("context"), "the error should mention the context: {}", out.stderr);
    assert!(out.stdout.trim().is_empty(), "no answer on failure: {:?}", out.stdout);

    let out = ember(&["run", "--raw", "--temperature", "0", "--max-tokens", "4", "--ctx", "16", "--truncate", &long]).ok();
    assert!(out.stdout.ends_with('\n') && out.stdout.len() > 1, "{:?}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// chat

/// `ember chat`'s greedy answer (with its newline) to `COLORS_Q` alone, ended by Ctrl-D.
fn chat_colors_answer() -> String {
    let out = ember_stdin(&["chat", "--temperature", "0", "--max-tokens", "32"], &format!("{COLORS_Q}\n")).ok();
    assert!(out.stdout.ends_with('\n'), "{:?}", out.stdout);
    assert_colors_answer(&out.stdout);
    out.stdout
}

#[test]
fn chat_answers_resets_and_exits() {
    let answer = chat_colors_answer();
    // The same question before and after /reset: the second answer is the first one again
    // only if the first exchange was really forgotten.
    let input = format!("{COLORS_Q}\n/reset\n{COLORS_Q}\n/exit\nthis line is never read\n");
    let out = ember_stdin(&["chat", "--temperature", "0", "--max-tokens", "32"], &input).ok();
    assert_eq!(out.stdout, format!("{answer}{answer}"), "stderr:\n{}", out.stderr);

    // A second turn without /reset sees the first: it runs, and answers something.
    let input = format!("{COLORS_Q}\nAnd the secondary colors?\n/exit\n");
    let out = ember_stdin(&["chat", "--temperature", "0", "--max-tokens", "32"], &input).ok();
    assert!(out.stdout.starts_with(&answer), "the first answer changed: {:?}", out.stdout);
    assert!(out.stdout.len() > answer.len() + 1, "no second answer: {:?}", out.stdout);
}

#[test]
fn chat_exits_cleanly_on_end_of_input() {
    // Ctrl-D after one question (no /exit): one answer, the reference's firm text first.
    let answer = chat_colors_answer();
    assert!(!answer.trim().is_empty());
    // Ctrl-D straight away, and blank lines only.
    let out = ember_stdin(&["chat", "--temperature", "0"], "").ok();
    assert_eq!(out.stdout, "");
    let out = ember_stdin(&["chat", "--temperature", "0"], "\n  \n").ok();
    assert_eq!(out.stdout, "");
}

// ---------------------------------------------------------------------------------------------
// batch

/// Parses a JSONL file; every non-empty line must be a JSON object.
#[track_caller]
fn read_jsonl(path: &Path) -> (Vec<String>, Vec<Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "the output must end with a newline: {text:?}");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let values = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {l}", path.display(), i + 1));
            assert!(v.is_object(), "{}:{}: not an object: {l}", path.display(), i + 1);
            v
        })
        .collect();
    (lines, values)
}

fn by_id<'a>(results: &'a [Value], id: &Value) -> Vec<&'a Value> {
    results.iter().filter(|r| &r["id"] == id).collect()
}

#[test]
fn batch_answers_good_lines_reports_bad_ones_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut lines = vec![
        serde_json::json!({"id": "a", "prompt": FRANCE, "raw": true, "temperature": 0, "max_tokens": 5}).to_string(),
        serde_json::json!({"id": 2, "messages": [{"role": "user", "content": COLORS_Q}], "temperature": 0, "max_tokens": 40}).to_string(),
        r#"{"id": "broken", "prompt": "unterminated"#.to_string(), // line 3: malformed JSON
        serde_json::json!({"id": "empty", "max_tokens": 4}).to_string(), // line 4: neither prompt nor messages
        String::new(),                                                  // blank lines are ignored
        serde_json::json!({"id": "d", "prompt": HELLO_Q, "temperature": 0, "max_tokens": 40}).to_string(), // chat template by default
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec!["batch".to_string(), "--input".into(), input.display().to_string(), "--output".into(), output.display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run_batch = || {
        let a = args(&[]);
        ember(&a.iter().map(String::as_str).collect::<Vec<_>>()).ok()
    };

    let out = run_batch();
    for bad in [3, 4] {
        assert!(
            out.stderr.contains(&format!(":{bad}:")) || out.stderr.contains(&format!("line {bad}")),
            "stderr should name bad line {bad}:\n{}",
            out.stderr
        );
    }
    for good in [1, 2, 6] {
        assert!(!out.stderr.contains(&format!("in.jsonl:{good}:")), "line {good} is good:\n{}", out.stderr);
    }
    let (first_lines, results) = read_jsonl(&output);
    assert_eq!(results.len(), 3, "one line per good id: {first_lines:#?}");
    for id in [serde_json::json!("a"), serde_json::json!(2), serde_json::json!("d")] {
        let r = by_id(&results, &id);
        assert_eq!(r.len(), 1, "id {id}: {first_lines:#?}");
        let r = r[0];
        assert!(r.get("error").is_none(), "id {id} failed: {r}");
        for field in ["text", "finish_reason", "prompt_tokens", "completion_tokens"] {
            assert!(r.get(field).is_some(), "id {id} lacks `{field}`: {r}");
        }
    }
    for id in ["broken", "empty"] {
        assert!(by_id(&results, &serde_json::json!(id)).is_empty(), "bad line {id} was answered");
    }

    // Greedy answers equal `ember run`'s, and the reference's over its firm steps (all 5 for "a").
    let a = by_id(&results, &serde_json::json!("a"))[0];
    let run_a = run_greedy_raw(FRANCE, 5);
    assert_eq!(format!("{}\n", a["text"].as_str().unwrap()), run_a);
    assert_eq!(a["text"], reference_firm_text(FRANCE).as_str());
    assert_eq!(a["finish_reason"], "length");
    assert_eq!(a["prompt_tokens"], reference_prompt(FRANCE)["n_prompt"]);
    assert_eq!(a["completion_tokens"], 5);

    // Ids 2 and "d": `ember run` on the same question gives the same text, finish reason and
    // token counts (its log line on stderr: "N prompt tokens, M generated in … (\"reason\")").
    // Id 2's answer also starts with the reference's firm text; "d" (not in the reference) is
    // there for an answer that Ember ends with its end of turn before 40 tokens.
    for (id, question) in [(serde_json::json!(2), COLORS_Q), (serde_json::json!("d"), HELLO_Q)] {
        let run = ember(&["run", "--temperature", "0", "--max-tokens", "40", question]).ok();
        let usage = run.stderr.lines().find(|l| l.contains(" prompt tokens, ")).unwrap_or_else(|| panic!("no usage line: {}", run.stderr));
        let words: Vec<&str> = usage.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "prompt").expect("usage line");
        let (run_prompt, run_completion): (u64, u64) = (words[at - 1].parse().unwrap(), words[at + 2].parse().unwrap());
        let run_finish = usage.rsplit('"').nth(1).unwrap_or_else(|| panic!("no finish reason in {usage:?}"));

        let r = by_id(&results, &id)[0];
        let text = r["text"].as_str().unwrap();
        assert_eq!(format!("{text}\n"), run.stdout, "id {id}");
        assert_eq!(r["finish_reason"], run_finish, "id {id}: {r} vs {usage}");
        assert_eq!(r["prompt_tokens"], run_prompt, "id {id}: {r} vs {usage}");
        assert_eq!(r["completion_tokens"], run_completion, "id {id}: {r} vs {usage}");
        // Ended by its end of turn (neither printed nor counted) before 40 tokens, or cut at 40.
        match r["finish_reason"].as_str() {
            Some("stop") => assert!(run_completion < 40 && !text.contains("<|im_end|>"), "id {id}: {r}"),
            Some("length") => assert_eq!(run_completion, 40, "id {id}: {r}"),
            _ => panic!("id {id}: finish reason {r}"),
        }
        if question == COLORS_Q {
            assert_colors_answer(text);
            assert_eq!(r["prompt_tokens"], reference_prompt(COLORS_Q)["n_prompt"], "id {id}");
        }
    }

    // Re-running with one new id adds only that id; the old lines stay byte for byte.
    lines.push(serde_json::json!({"id": "e", "prompt": "def fibonacci(n):", "raw": true, "temperature": 0, "max_tokens": 6}).to_string());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let _ = run_batch();
    let (second_lines, results) = read_jsonl(&output);
    assert_eq!(second_lines.len(), first_lines.len() + 1, "{second_lines:#?}");
    for l in &first_lines {
        assert!(second_lines.contains(l), "old line changed or lost: {l}");
    }
    let e = by_id(&results, &serde_json::json!("e"));
    assert_eq!(e.len(), 1);
    assert_eq!(format!("{}\n", e[0]["text"].as_str().unwrap()), run_greedy_raw("def fibonacci(n):", 6));
    assert_eq!(e[0]["completion_tokens"], 6);

    // Nothing new: the file is left as it was.
    let before = std::fs::read(&output).unwrap();
    let _ = run_batch();
    assert_eq!(std::fs::read(&output).unwrap(), before, "a run with nothing to do changed the output");

    // An output cut mid-line (a crash while writing by another tool) is repaired: the answered
    // ids are kept, the broken tail dropped, and the file is valid JSONL again.
    let mut f = std::fs::OpenOptions::new().append(true).open(&output).unwrap();
    f.write_all(br#"{"id": "a", "te"#).unwrap();
    drop(f);
    let _ = run_batch();
    let (third_lines, results) = read_jsonl(&output);
    assert_eq!(third_lines, second_lines, "{third_lines:#?}");
    assert_eq!(by_id(&results, &serde_json::json!("a")).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// perplexity

#[test]
fn perplexity_json_matches_the_reference_on_two_windows() {
    let file = shared_dir("EMBER_DATA_DIR", "data").join("wikitext-2-tokens-test.txt");
    let out = ember(&["perplexity", "--json", "--windows", "2", "--file", &file.display().to_string()]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {:?}", out.stdout);
    let got: Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    let (ppl, top1, tokens) = (got["ppl"].as_f64().expect("ppl"), got["top1"].as_f64().expect("top1"), got["tokens"].as_u64().expect("tokens"));

    let r = reference("ppl.json");
    let w = r["wikitext"]["per_window"].as_array().unwrap();
    let nll: f64 = w[..2].iter().map(|x| x["nll_sum_all511"].as_f64().unwrap()).sum();
    let correct: f64 = w[..2].iter().map(|x| x["top1_correct_all511"].as_f64().unwrap()).sum();
    let ref_ppl = (nll / 1022.0).exp();
    let ref_top1 = correct / 1022.0;
    eprintln!("perplexity {ppl:.4} (reference {ref_ppl:.4}), top-1 {top1:.4} (reference {ref_top1:.4})");
    assert_eq!(tokens, 2 * 511);
    assert!((ppl / ref_ppl - 1.0).abs() < 0.005, "perplexity {ppl} vs reference {ref_ppl}");
    assert!((top1 - ref_top1).abs() < 0.01, "top-1 {top1} vs reference {ref_top1}");
}

// ---------------------------------------------------------------------------------------------
// info, pull

#[test]
fn info_describes_the_model() {
    let out = ember(&["info"]).ok();
    let s = &out.stdout;
    assert!(s.contains("llama"), "{s}");
    assert!(s.contains("Q4_1"), "{s}");
    let layers = s.lines().find(|l| l.to_lowercase().contains("layers")).unwrap_or_else(|| panic!("no layers line: {s}"));
    assert!(layers.split_whitespace().any(|w| w == "30"), "30 layers: {layers}");
    // --model given as a flag works the same as EMBER_MODEL.
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.args(["info", "--model", &model_path().display().to_string()]).env_remove("EMBER_MODEL").env("EMBER_OFFLINE", "1");
    let flag = run_cmd(c, None).ok();
    assert_eq!(flag.stdout, out.stdout);
}

#[test]
fn pull_lists_known_models_without_downloading() {
    let out = ember(&["pull", "--list"]).ok();
    assert!(out.stdout.lines().any(|l| l.split_whitespace().next() == Some("smollm2-135m")), "{}", out.stdout);
}

#[test]
fn known_model_absent_from_the_cache_fails_offline_without_downloading() {
    let home = tempfile::tempdir().unwrap();
    let mut c = ember_cmd();
    c.args(["info", "--model", "smollm2-135m"]).env("EMBER_HOME", home.path());
    let out = run_cmd(c, None).fails();
    assert!(out.stderr.contains("EMBER_OFFLINE"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear error naming the file, never a panic.

#[test]
fn missing_model_path_is_named() {
    let out = ember(&["run", "--model", "/nonexistent/model.gguf", "hello"]).fails();
    assert!(out.stderr.contains("/nonexistent/model.gguf"), "{}", out.stderr);
    let out = ember(&["info", "--model", "/nonexistent"]).fails();
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);
    let mut c = ember_cmd();
    c.args(["run", "hello"]).env("EMBER_MODEL", "/nonexistent/env-model.gguf");
    let out = run_cmd(c, None).fails();
    assert!(out.stderr.contains("/nonexistent/env-model.gguf"), "{}", out.stderr);
}

#[test]
fn truncated_model_file_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.gguf");
    let mut head = vec![0u8; 1 << 20];
    use std::io::Read;
    std::fs::File::open(model_path()).unwrap().read_exact(&mut head).unwrap();
    std::fs::write(&path, &head).unwrap();
    for cmd in [&["run", "--model", &path.display().to_string(), "hello"][..], &["info", "--model", &path.display().to_string()]] {
        let out = ember(cmd).fails();
        assert!(out.stderr.contains(&path.display().to_string()), "{}", out.stderr);
        assert!(out.stderr.contains("truncated"), "{}", out.stderr);
    }
    // An empty file too.
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let out = ember(&["info", "--model", &empty.display().to_string()]).fails();
    assert!(out.stderr.contains(&empty.display().to_string()) && out.stderr.contains("truncated"), "{}", out.stderr);
}

#[test]
fn random_bytes_are_not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.gguf");
    let mut x = 0x9E37_79B9u32;
    let noise: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert_ne!(&noise[..4], b"GGUF");
    std::fs::write(&path, &noise).unwrap();
    let out = ember(&["run", "--model", &path.display().to_string(), "hello"]).fails();
    assert!(out.stderr.contains(&path.display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("not a GGUF file"), "{}", out.stderr);
}

#[test]
fn folder_without_a_model_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = ember(&["info", "--model", &dir.path().display().to_string()]).fails();
    assert!(out.stderr.contains(&dir.path().display().to_string()), "{}", out.stderr);
}

#[test]
fn bad_arguments_fail_without_panicking() {
    // Unknown flag, missing file for perplexity and batch, zero context.
    ember(&["run", "--no-such-flag", "x"]).fails();
    let out = ember(&["perplexity", "--file", "/nonexistent/text.txt"]).fails();
    assert!(out.stderr.contains("/nonexistent/text.txt"), "{}", out.stderr);
    let out = ember(&["batch", "--input", "/nonexistent/in.jsonl", "--output", "/tmp/ember-never-written.jsonl"]).fails();
    assert!(out.stderr.contains("/nonexistent/in.jsonl"), "{}", out.stderr);
    let out = ember(&["run", "--ctx", "0", "--raw", "hello"]).fails();
    assert!(out.stderr.contains("ctx"), "{}", out.stderr);
}

/// `synth` → `profile` → `bench --text` with the profile beside the model, as a user runs the
/// sparsity pipeline: the synthetic ReLU model's FFN is ~90% inactive by construction, so the
/// profiler must find it, write the profile where `--profile` looks by default, and the sparse
/// decode must report about that sparsity. Bad arguments of the new commands fail clearly.
#[test]
fn synth_profile_and_sparse_bench_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("synth.gguf");
    let m = model.to_str().unwrap();
    let o = ember(&["synth", "--shape", "tiny", "--act", "relu", "--sparsity", "0.9", "--quant", "q8_0", "-o", m]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let corpus = shared_dir("EMBER_DATA_DIR", "data").join("tinyshakespeare.txt");
    let o = ember(&["profile", "-m", m, "--corpus", corpus.to_str().unwrap(), "--ctx", "128", "--tokens", "512", "--samples", "256", "--heldout", "256"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(dir.path().join("synth.profile.safetensors").is_file(), "the profile goes beside the model: {}", o.stderr);
    assert!(o.stdout.contains("default:") && o.stdout.contains("ffn_magnitude"), "{}", o.stdout);
    let text = shared_dir("EMBER_DATA_DIR", "data").join("wikitext-2-tokens-test.txt");
    let o = ember(&["bench", "-m", m, "-p", "16", "-n", "16", "-r", "1", "--text", text.to_str().unwrap(), "--sparsity", "0.5", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let j: Value = serde_json::from_str(o.stdout.trim()).expect("one JSON line");
    let sparsity = j["sparsity"].as_f64().expect("the sparsity reached");
    // ReLU zeros (~90%) are skipped whatever the 50% threshold asks.
    assert!((0.8..=0.97).contains(&sparsity), "decode sparsity {sparsity}");
    assert!(j["decode_ffn_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{j}");

    let bad = [
        (vec!["synth", "--shape", "huge", "-o", m], "--shape"),
        (vec!["synth", "--act", "tanh", "-o", m], "--act"),
        (vec!["synth", "--quant", "q3_k", "-o", m], "--quant"),
        (vec!["bench", "-m", m, "-n", "4", "--profile", "/nonexistent.profile.safetensors"], "/nonexistent.profile.safetensors"),
        (vec!["run", "--criterion", "magic", "hi"], "criterion"),
    ];
    for (args, needle) in bad {
        let o = ember(&args);
        assert!(o.code.is_some_and(|c| c != 0), "{args:?} should fail: {}", o.stderr);
        assert!(o.stderr.contains(needle), "{args:?}: expected {needle:?} in {}", o.stderr);
    }
}

/// `ember plan` on the default model, as a user asks "will it run on my card, and how fast?": at
/// several budgets and in both modes the totals line and the table's rows stay within the budget
/// and the bound is printed; bad budgets, links, modes and device flags fail with messages that
/// name them.
#[test]
fn plan_stays_within_the_budget_and_rejects_bad_arguments() {
    let mib = |s: &str| -> f64 { s.trim().parse().unwrap_or_else(|_| panic!("a MiB figure: {s:?}")) };
    for (vram, budget_mib) in [("32MiB", 32.0), ("100MiB", 100.0), ("0.5GiB", 512.0), ("1000000", 1e6 / 1048576.0)] {
        for mode in ["neurons", "layers"] {
            let o = ember(&["plan", "--vram", vram, "--ctx", "2048", "--offload", mode]);
            assert_eq!(o.code, Some(0), "{vram} {mode}: {}", o.stderr);
            // "GPU: 31.99 MiB of 32.00 MiB (99.9%): weights …, KV …, scratch 0.79 MiB"
            let totals = o.stdout.lines().find(|l| l.starts_with("GPU: ")).unwrap_or_else(|| panic!("no totals line:\n{}", o.stdout));
            let used = mib(totals["GPU: ".len()..].split(' ').next().unwrap());
            assert!(used <= budget_mib + 0.005, "{vram} {mode}: {totals}");
            let scratch = mib(totals.rsplit("scratch ").next().unwrap().trim_end_matches(" MiB"));
            // Rows "| 3 | GPU | 1536/1536 (whole) | 5.11 | 100.0% | … |" and "| output | GPU | | 34.69 | | … |".
            let rows: f64 = o
                .stdout
                .lines()
                .filter(|l| l.starts_with("| ") && !l.starts_with("| layer"))
                .map(|l| mib(l.split('|').nth(4).unwrap()))
                .sum();
            assert!((rows + scratch - used).abs() < 0.2, "{vram} {mode}: rows {rows} + scratch {scratch} vs {used}\n{}", o.stdout);
            assert_eq!(o.stdout.matches("tokens/s").count(), 3, "this plan, the other mode, CPU only:\n{}", o.stdout);
        }
    }
    let o = ember(&["plan", "--vram", "10KiB"]);
    assert!(o.code == Some(0) && o.stdout.contains("below the GPU scratch"), "{}", o.stdout);
    let bad = [
        (vec!["plan", "--vram", "3.5XB"], "unknown unit 'XB'"),
        (vec!["plan", "--vram", "-1GiB"], "--vram"),
        (vec!["plan"], "--vram"),
        (vec!["plan", "--vram", "1GiB", "--link", "pcie9x9"], "unknown link 'pcie9x9'"),
        (vec!["plan", "--vram", "1GiB", "--offload", "rows"], "neurons or layers"),
        (vec!["plan", "--vram", "1GiB", "--ctx", "0"], "ctx"),
        (vec!["plan", "--vram", "1GiB", "--gpu-bandwidth", "0"], "bandwidth"),
        (vec!["plan", "--vram", "1GiB", "--profile", "/nonexistent.profile.safetensors"], "/nonexistent.profile.safetensors"),
        (vec!["run", "--gpu", "tpu:0", "--raw", "hi"], "unknown device 'tpu:0'"),
        (vec!["run", "--vram", "lots", "--raw", "hi"], "--vram"),
        (vec!["run", "--offload", "rows", "--raw", "hi"], "neurons or layers"),
    ];
    for (args, needle) in bad {
        let o = ember(&args).fails();
        assert!(o.stderr.contains(needle), "{args:?}: expected {needle:?} in {}", o.stderr);
    }
}
