//! Chat templates: the model's own Jinja template rendered with minijinja, in the environment
//! Hugging Face transformers gives it (`PreTrainedTokenizerBase.apply_chat_template`,
//! `utils/chat_template_utils.py`): `trim_blocks` and `lstrip_blocks`, loop controls, Python
//! string/dict methods, `raise_exception`, `strftime_now`, a Python-style `tojson`, and the
//! `bos_token`/`eos_token` strings of the vocabulary.

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, MetaValue};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_bytes", &self.source.len())
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// A template from its Jinja source; `bos_token`/`eos_token` are the texts the template
    /// sees under those names. A syntax error is reported here, not at render time.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone()).map_err(|e| template_error("invalid template", &e))?;
        Ok(ChatTemplate { source, bos_token: bos_token.into(), eos_token: eos_token.into(), env })
    }

    /// The template in GGUF `tokenizer.chat_template`, if any.
    pub fn from_gguf(g: &GgufFile) -> Result<Option<ChatTemplate>> {
        let Some(source) = g.opt("tokenizer.chat_template", |v| v.as_str().map(str::to_string), "a string")? else {
            return Ok(None);
        };
        let token = |key: &str| -> String {
            let id = g.get(key).and_then(MetaValue::as_u64);
            let tokens = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array);
            match (id, tokens) {
                (Some(id), Some(tokens)) => {
                    tokens.get(id as usize).and_then(MetaValue::as_str).unwrap_or_default().to_string()
                }
                _ => String::new(),
            }
        };
        let (bos, eos) = (token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"));
        ChatTemplate::new(source, bos, eos).map(Some).map_err(|e| {
            EngineError::Template(format!("{} (tokenizer.chat_template): {}", g.path.display(), strip_prefix(&e)))
        })
    }

    /// The template in a folder's `tokenizer_config.json` (or `chat_template.jinja`), if any.
    pub fn from_hf_folder(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let special = |key: &str| -> String {
            let v = config.as_ref().and_then(|c| c.get(key));
            let text = v.and_then(|v| v.as_str().or_else(|| v.get("content").and_then(Json::as_str)));
            text.unwrap_or_default().to_string()
        };
        let (source, origin) = match config.as_ref().and_then(|c| c.get("chat_template")) {
            Some(t) => (pick_template(t).map_err(|p| config_error(&config_path, &p))?, config_path.clone()),
            None => {
                let jinja = dir.join("chat_template.jinja");
                let json = dir.join("chat_template.json");
                if jinja.is_file() {
                    (std::fs::read_to_string(&jinja).map_err(|e| EngineError::io(&jinja, e))?, jinja)
                } else if let Some(v) = read_json(&json)? {
                    let t = v.get("chat_template").ok_or_else(|| config_error(&json, "no `chat_template` key"))?;
                    (pick_template(t).map_err(|p| config_error(&json, &p))?, json)
                } else {
                    return Ok(None);
                }
            }
        };
        ChatTemplate::new(source, special("bos_token"), special("eos_token"))
            .map(Some)
            .map_err(|e| EngineError::Template(format!("{}: {}", origin.display(), strip_prefix(&e))))
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(|e| template_error("invalid template", &e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| template_error("rendering failed", &e))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }
}

fn template_error(what: &str, e: &JinjaError) -> EngineError {
    let mut msg = format!("{what}: {e}");
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    EngineError::Template(msg)
}

/// The message of an `EngineError::Template` without the variant's own prefix.
fn strip_prefix(e: &EngineError) -> String {
    match e {
        EngineError::Template(m) => m.clone(),
        other => other.to_string(),
    }
}

fn config_error(path: &Path, problem: &str) -> EngineError {
    EngineError::Config { path: path.to_path_buf(), field: "chat_template".into(), problem: problem.into() }
}

/// `chat_template` is a string, or a list of `{name, template}` (the one named `default`, else
/// the first).
fn pick_template(v: &Json) -> std::result::Result<String, String> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Array(list) => {
            let named = |want: Option<&str>| {
                list.iter().find(|t| want.is_none() || t.get("name").and_then(Json::as_str) == want)
            };
            let t = named(Some("default")).or_else(|| named(None)).ok_or("the list of templates is empty")?;
            t.get("template")
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| "a listed template has no `template` string".into())
        }
        _ => Err("expected a string or a list of {name, template}".into()),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::Template(format!("{}: invalid JSON: {e}", path.display())))
}

// ---- functions and filters the templates expect ---------------------------------------------

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, format!("the template raised an exception: {message}")))
}

/// `strftime_now(format)`: the current UTC time with Python's `strftime` codes.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime(secs as i64, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats a Unix time (UTC) with the common `strftime` codes.
pub fn strftime(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month_name = MONTHS[(month - 1) as usize];
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:2}"),
            Some('-') => match chars.next() {
                Some('d') => out += &day.to_string(),
                Some('m') => out += &month.to_string(),
                Some(o) => out += &format!("%-{o}"),
                None => out += "%-",
            },
            Some('B') => out += month_name,
            Some('b') | Some('h') => out += &month_name[..3],
            Some('A') => out += DAYS[weekday],
            Some('a') => out += &DAYS[weekday][..3],
            Some('j') => out += &format!("{yday:03}"),
            Some('H') => out += &format!("{h:02}"),
            Some('I') => out += &format!("{:02}", (h + 11) % 12 + 1),
            Some('p') => out += if h < 12 { "AM" } else { "PM" },
            Some('M') => out += &format!("{m:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some('F') => out += &format!("{year}-{month:02}-{day:02}"),
            Some('T') => out += &format!("{h:02}:{m:02}:{s:02}"),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as transformers defines it: Python's `json.dumps` (`", "` and `": "` separators,
/// `indent=` for pretty output, keys in insertion order, non-ASCII kept, nothing HTML-escaped).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    PyJson { indent, sort_keys: sort_keys.unwrap_or(false) }.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    }

    fn write(&self, out: &mut String, v: &Value, depth: usize) -> std::result::Result<(), JinjaError> {
        let item_sep = if self.indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i > 0 { item_sep } else { "" });
                    self.newline(out, depth + 1);
                    self.write(out, item, depth + 1)?;
                }
                if !items.is_empty() {
                    self.newline(out, depth);
                }
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    out.push_str(if i > 0 { item_sep } else { "" });
                    self.newline(out, depth + 1);
                    let name = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                    out.push_str(&Json::String(name).to_string());
                    out.push_str(": ");
                    self.write(out, &v.get_item(key)?, depth + 1)?;
                }
                if !keys.is_empty() {
                    self.newline(out, depth);
                }
                out.push('}');
            }
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            _ => {
                let json = serde_json::to_string(v)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
                out.push_str(&json);
            }
        }
        Ok(())
    }
}
