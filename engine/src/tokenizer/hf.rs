//! Tokenizers from a Hugging Face model folder: `tokenizer.json` (the `tokenizers` library reads
//! it), with BOS/EOS and `add_bos_token` from `tokenizer_config.json` as transformers'
//! `PreTrainedTokenizerFast` does, and extra end-of-generation ids from `generation_config.json`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer as HfTokenizer;

use super::{end_of_turn_ids, Tokenizer};
use crate::error::{EngineError, Result};

pub(crate) fn from_folder(dir: &Path) -> Result<Tokenizer> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(EngineError::Tokenizer(format!(
            "{}: not found (a Hugging Face model folder needs tokenizer.json)",
            file.display()
        )));
    }
    let inner = HfTokenizer::from_file(&file)
        .map_err(|e| EngineError::Tokenizer(format!("{}: not a valid tokenizer.json: {e}", file.display())))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let model_config = read_json(&dir.join("config.json"))?;
    let generation = read_json(&dir.join("generation_config.json"))?;

    let named = |key: &str| -> Option<u32> {
        let v = config.as_ref()?.get(key)?;
        let text = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
        inner.token_to_id(text)
    };
    let numbered = |cfg: &Option<Value>, key: &str| -> Vec<u32> {
        match cfg.as_ref().and_then(|c| c.get(key)) {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
            _ => Vec::new(),
        }
    };
    let bos = named("bos_token").or_else(|| numbered(&model_config, "bos_token_id").first().copied());
    let eos = named("eos_token").or_else(|| numbered(&model_config, "eos_token_id").first().copied());

    // add_bos_token when the config says; otherwise whatever the post-processor would do.
    let add_bos = match config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool) {
        Some(b) => b,
        None => match (bos, inner.encode_fast("", true)) {
            (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
            _ => false,
        },
    };

    let add_eos =
        eos.is_some() && config.as_ref().and_then(|c| c.get("add_eos_token")).and_then(Value::as_bool).unwrap_or(false);

    let mut eog: BTreeSet<u32> = eos.into_iter().collect();
    eog.extend(numbered(&generation, "eos_token_id"));
    let special: Vec<(u32, String)> = inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, t)| (id, t.content))
        .collect();
    eog.extend(end_of_turn_ids(special.iter().map(|(id, s)| (*id, s.as_str()))));

    let n_vocab = inner.get_vocab(true).values().copied().max().map_or(0, |m| m as usize + 1);
    Ok(Tokenizer { bos, eos, add_bos, add_eos, eot: None, inner, n_vocab, eog, notes: Vec::new() })
}

/// A JSON file that may be absent (`Ok(None)`); present but unreadable or invalid is an error.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}
