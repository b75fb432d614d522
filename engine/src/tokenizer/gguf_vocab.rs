//! The `tokenizer.ggml.*` metadata of a GGUF file, read and checked: tokens, their types and
//! scores, merges, special token ids and the add-BOS/EOS flags. Follows llama.cpp
//! `src/llama-vocab.cpp` (`llama_vocab::impl::load`), including its defaults for keys a file
//! leaves out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, MetaValue};

/// llama.cpp `llama_token_type`, as stored in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// The vocabulary model of the file (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VocabModel {
    /// `gpt2`: byte-level BPE with merges.
    Bpe,
    /// `llama`: SentencePiece with scores and byte fallback.
    Spm,
}

pub(crate) struct GgufVocab {
    pub path: PathBuf,
    pub model: VocabModel,
    /// `tokenizer.ggml.pre`, when present.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    /// One per token (zeros when the file has none).
    pub scores: Vec<f32>,
    /// BPE merges as (left, right) pairs, in rank order; empty for SPM.
    pub merges: Vec<(String, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    /// Explicit `tokenizer.ggml.add_bos_token`, if any (the default depends on the pre-type).
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

impl GgufVocab {
    pub fn read(g: &GgufFile) -> Result<GgufVocab> {
        let path = g.path.clone();
        let model_name = g.get_str("tokenizer.ggml.model")?;
        let model = match model_name {
            "gpt2" => VocabModel::Bpe,
            "llama" => VocabModel::Spm,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "{}: tokenizer model `{other}` (tokenizer.ggml.model) is not supported; Ember reads \
                     `gpt2` (byte-level BPE) and `llama` (SentencePiece) vocabularies",
                    path.display()
                )))
            }
        };
        // An empty token gets a placeholder name, as llama.cpp does.
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.to_string() })
            .collect();
        if tokens.is_empty() {
            return Err(config_err(&path, "tokenizer.ggml.tokens", "the vocabulary is empty".into()));
        }
        let n = tokens.len();
        let types = match numeric_array(g, "tokenizer.ggml.token_type", n, MetaValue::as_i64)? {
            Some(v) => v.into_iter().map(TokenType::from_i64).collect(),
            None => vec![TokenType::Normal; n],
        };
        let scores = match numeric_array(g, "tokenizer.ggml.scores", n, MetaValue::as_f64)? {
            Some(v) => v.into_iter().map(|s| s as f32).collect(),
            None if model == VocabModel::Spm => {
                return Err(config_err(
                    &path,
                    "tokenizer.ggml.scores",
                    "missing: a `llama` vocabulary needs scores".into(),
                ))
            }
            None => vec![0.0; n],
        };
        let merges = match model {
            VocabModel::Bpe => read_merges(g, &tokens)?,
            VocabModel::Spm => Vec::new(),
        };
        // llama.cpp's defaults when a key is absent: SPM has <unk>=0, <s>=1, </s>=2.
        let (bos_default, eos_default, unk_default) = match model {
            VocabModel::Spm => (Some(1), Some(2), Some(0)),
            VocabModel::Bpe => (None, None, None),
        };
        let id = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            Ok(token_id(g, key, n)?.unwrap_or(default).filter(|&i| (i as usize) < n))
        };
        Ok(GgufVocab {
            pre: g.opt("tokenizer.ggml.pre", |v| v.as_str().map(str::to_string), "a string")?,
            bos: id("tokenizer.ggml.bos_token_id", bos_default)?,
            eos: id("tokenizer.ggml.eos_token_id", eos_default)?,
            eot: id("tokenizer.ggml.eot_token_id", None)?,
            eom: id("tokenizer.ggml.eom_token_id", None)?,
            unk: id("tokenizer.ggml.unknown_token_id", unk_default)?,
            add_bos: g.opt("tokenizer.ggml.add_bos_token", MetaValue::as_bool, "a bool")?,
            add_eos: g.opt("tokenizer.ggml.add_eos_token", MetaValue::as_bool, "a bool")?,
            add_space_prefix: g.opt("tokenizer.ggml.add_space_prefix", MetaValue::as_bool, "a bool")?,
            path,
            model,
            tokens,
            types,
            scores,
            merges,
        })
    }
}

fn config_err(path: &Path, field: &str, problem: String) -> EngineError {
    EngineError::Config { path: path.to_path_buf(), field: field.to_string(), problem }
}

/// An optional per-token numeric array; its length must match the vocabulary.
fn numeric_array<T>(g: &GgufFile, key: &str, n: usize, conv: fn(&MetaValue) -> Option<T>) -> Result<Option<Vec<T>>> {
    let Some(value) = g.get(key) else {
        return Ok(None);
    };
    let arr = value.as_array().ok_or_else(|| config_err(&g.path, key, "expected an array".into()))?;
    if arr.len() != n {
        return Err(config_err(&g.path, key, format!("has {} entries but tokenizer.ggml.tokens has {n}", arr.len())));
    }
    arr.iter()
        .enumerate()
        .map(|(i, v)| conv(v).ok_or_else(|| config_err(&g.path, key, format!("entry {i} is {v:?}, not a number"))))
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

/// A token id key: absent → `Ok(None)`; negative (some converters write -1) → `Some(None)`;
/// out of range → error.
fn token_id(g: &GgufFile, key: &str, n: usize) -> Result<Option<Option<u32>>> {
    let Some(v) = g.opt(key, MetaValue::as_i64, "an integer token id")? else {
        return Ok(None);
    };
    if v < 0 {
        return Ok(Some(None));
    }
    if v as u64 >= n as u64 {
        return Err(config_err(&g.path, key, format!("token id {v} is outside the vocabulary of {n} tokens")));
    }
    Ok(Some(Some(v as u32)))
}

/// `tokenizer.ggml.merges`: "left right" strings, split at the first space after the first
/// byte (llama.cpp does the same); every part and their concatenation must be tokens.
fn read_merges(g: &GgufFile, tokens: &[String]) -> Result<Vec<(String, String)>> {
    const KEY: &str = "tokenizer.ggml.merges";
    let raw = g.get_str_array(KEY)?;
    let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let mut merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p);
        let Some(pos) = split else {
            return Err(config_err(&g.path, KEY, format!("merge {i} `{m}` is not two tokens separated by a space")));
        };
        let (left, right) = (&m[..pos], &m[pos + 1..]);
        for part in [left, right, &format!("{left}{right}")] {
            if !known.contains(part) {
                return Err(config_err(
                    &g.path,
                    KEY,
                    format!("merge {i} `{m}` needs token `{part}`, which is not in tokenizer.ggml.tokens"),
                ));
            }
        }
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}
