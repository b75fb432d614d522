//! Tokenizers: from a Hugging Face `tokenizer.json`, or rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`), with BOS/EOS/add_bos handled as llama.cpp does.
//! (Owner: tokenizer work in progress — API below is the contract other modules use.)

use std::path::Path;

use crate::error::Result;
use crate::gguf::GgufFile;

pub struct Tokenizer {
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos: Option<u32>,
    /// Whether a BOS token is prepended when encoding a whole prompt (GGUF
    /// `tokenizer.ggml.add_bos_token`, tokenizer_config.json `add_bos_token`).
    pub add_bos: bool,
}

impl Tokenizer {
    pub fn from_gguf(_g: &GgufFile) -> Result<Tokenizer> {
        unimplemented!()
    }

    /// From a folder holding `tokenizer.json` (and optionally `tokenizer_config.json`).
    pub fn from_hf_folder(_dir: &Path) -> Result<Tokenizer> {
        unimplemented!()
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised; BOS is prepended when `add_bos` is true and the model has one.
    pub fn encode(&self, _text: &str, _add_bos: bool) -> Result<Vec<u32>> {
        unimplemented!()
    }

    pub fn decode(&self, _ids: &[u32]) -> Result<String> {
        unimplemented!()
    }

    pub fn vocab_size(&self) -> usize {
        unimplemented!()
    }

    /// True for tokens that end a generation: EOS and end-of-turn tokens (`<|im_end|>`,
    /// `<|eot_id|>`, `<|endoftext|>`, `</s>`, … as the vocabulary marks them).
    pub fn is_end_of_generation(&self, _id: u32) -> bool {
        unimplemented!()
    }

    /// A decoder that turns a stream of ids into text pieces, holding back bytes of an
    /// incomplete UTF-8 character until the next token completes it.
    pub fn stream(&self) -> TextStream<'_> {
        unimplemented!()
    }
}

pub struct TextStream<'a> {
    _tok: &'a Tokenizer,
}

impl TextStream<'_> {
    /// Feeds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, _id: u32) -> Result<String> {
        unimplemented!()
    }
}
