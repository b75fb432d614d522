//! Tokenizers: from a Hugging Face `tokenizer.json`, or rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`), with BOS/EOS/add_bos handled as llama.cpp does
//! (`src/llama-vocab.cpp`). Both paths run on the Hugging Face `tokenizers` engine: a GGUF
//! vocabulary is turned into the same BPE model, pre-tokenizer and decoder that the model's
//! `tokenizer.json` would hold (see `build.rs`).
//!
//! Special tokens written in the text (`<|im_start|>`) are matched as single tokens, as
//! llama.cpp does with `parse_special = true`; the post-processor never adds tokens: BOS is
//! prepended by [`Tokenizer::encode`] when asked.

mod build;
mod gguf_vocab;
mod hf;
mod pretok;
mod stream;

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::Tokenizer as HfTokenizer;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use gguf_vocab::{GgufVocab, TokenType, VocabModel};
pub use stream::TextStream;

/// Token texts that end a turn or a document when the vocabulary marks them as control or
/// special tokens (llama.cpp's end-of-generation list, `special_eog_ids`).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
    "<end_of_utterance>",
];

#[derive(Clone)]
pub struct Tokenizer {
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos: Option<u32>,
    /// Whether a BOS token is prepended when encoding a whole prompt (GGUF
    /// `tokenizer.ggml.add_bos_token`, tokenizer_config.json `add_bos_token`).
    pub add_bos: bool,
    /// Whether the model expects EOS after a whole input (GGUF `tokenizer.ggml.add_eos_token`,
    /// tokenizer_config.json `add_eos_token`); [`encode`](Self::encode) never appends it.
    pub add_eos: bool,
    /// End-of-turn token (GGUF `tokenizer.ggml.eot_token_id`), if the file names one.
    pub eot: Option<u32>,
    inner: HfTokenizer,
    /// Ids are `0..n_vocab`.
    n_vocab: usize,
    /// Every id that ends a generation.
    eog: BTreeSet<u32>,
    /// Things a user may want to know about how the tokenizer was built (a missing
    /// pre-tokenizer type, …); nothing here is an error.
    notes: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("end_of_generation", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let mut v = GgufVocab::read(g)?;
        let mut notes = Vec::new();
        let (inner, add_bos_default) = match v.model {
            VocabModel::Bpe => {
                let pre = match v.pre.as_deref() {
                    None | Some("") => {
                        notes.push(format!(
                            "{}: no tokenizer.ggml.pre; using llama.cpp's `default` pre-tokenizer \
                             (as llama.cpp does; tokens may differ from the original model's)",
                            v.path.display()
                        ));
                        pretok::default_pre()
                    }
                    Some(name) => pretok::lookup(name).ok_or_else(|| {
                        EngineError::Tokenizer(format!(
                            "{}: unknown pre-tokenizer type `{name}` (tokenizer.ggml.pre); llama.cpp rejects it \
                             too. Known types: {}",
                            v.path.display(),
                            pretok::KNOWN
                        ))
                    })?,
                };
                (build::byte_level_bpe(&mut v, &pre)?, pre.add_bos)
            }
            VocabModel::Spm => (build::sentencepiece(&v)?, true),
        };
        let control = v
            .tokens
            .iter()
            .zip(&v.types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TokenType::Control)
            .map(|(i, (t, _))| (i as u32, t.as_str()));
        let mut eog: BTreeSet<u32> = end_of_turn_ids(control).collect();
        eog.extend([v.eos, v.eot, v.eom].into_iter().flatten());
        Ok(Tokenizer {
            bos: v.bos,
            eos: v.eos,
            add_bos: v.add_bos.unwrap_or(add_bos_default) && v.bos.is_some(),
            add_eos: v.add_eos.unwrap_or(false) && v.eos.is_some(),
            eot: v.eot,
            inner,
            n_vocab: v.tokens.len(),
            eog,
            notes,
        })
    }

    /// From a folder holding `tokenizer.json` (and optionally `tokenizer_config.json`).
    pub fn from_hf_folder(dir: &Path) -> Result<Tokenizer> {
        hf::from_folder(dir)
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised; BOS is prepended when `add_bos` is true and the model has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(format!("encoding {} bytes of text: {e}", text.len())))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included (as llama.cpp renders them with
    /// `special = true`); invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.n_vocab) {
            return Err(EngineError::Tokenizer(format!(
                "cannot decode token id {bad}: the vocabulary has {} tokens",
                self.n_vocab
            )));
        }
        self.inner.decode(ids, false).map_err(|e| EngineError::Tokenizer(format!("decoding {} tokens: {e}", ids.len())))
    }

    pub fn vocab_size(&self) -> usize {
        self.n_vocab
    }

    /// True for tokens that end a generation: EOS and end-of-turn tokens (`<|im_end|>`,
    /// `<|eot_id|>`, `<|endoftext|>`, `</s>`, … as the vocabulary marks them).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Every id that ends a generation, in increasing order.
    pub fn end_of_generation_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// A decoder that turns a stream of ids into text pieces, holding back bytes of an
    /// incomplete UTF-8 character until the next token completes it. The first piece is
    /// decoded as the start of a text (a SentencePiece leading space is dropped).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream::new(self, &[])
    }

    /// Like [`stream`](Self::stream), for tokens that continue `context` (the prompt): the
    /// first piece is decoded after the context's last tokens, so it keeps its leading space.
    pub fn stream_after(&self, context: &[u32]) -> TextStream<'_> {
        TextStream::new(self, &context[context.len().saturating_sub(4)..])
    }

    /// The vocabulary entry of `id` as stored (byte-level `Ġthe`, SentencePiece `▁the`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry, as stored.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Notes on how the tokenizer was built (e.g. a fallback llama.cpp also takes).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// The ids among `(id, text)` whose text is an end-of-turn marker.
fn end_of_turn_ids<'a>(tokens: impl Iterator<Item = (u32, &'a str)> + 'a) -> impl Iterator<Item = u32> + 'a {
    tokens.filter(|(_, t)| END_OF_TURN.contains(t)).map(|(id, _)| id)
}
