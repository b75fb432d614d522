//! Chat templates: the model's own Jinja template rendered with minijinja.
//! (Owner: tokenizer work in progress — API below is the contract other modules use.)

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gguf::GgufFile;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {}

impl ChatTemplate {
    /// The template in GGUF `tokenizer.chat_template`, if any.
    pub fn from_gguf(_g: &GgufFile) -> Result<Option<ChatTemplate>> {
        unimplemented!()
    }

    /// The template in a folder's `tokenizer_config.json` (or `chat_template.jinja`), if any.
    pub fn from_hf_folder(_dir: &Path) -> Result<Option<ChatTemplate>> {
        unimplemented!()
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's answer begins.
    pub fn render(&self, _messages: &[Message], _add_generation_prompt: bool) -> Result<String> {
        unimplemented!()
    }
}
