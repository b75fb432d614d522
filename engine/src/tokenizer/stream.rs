//! Incremental detokenization: the text that each new token adds, following Hugging Face
//! `tokenizers::DecodeStream` (and text-generation-inference's `decode_token`): decode a short
//! window of recent ids twice, without and with the new token, and emit the difference once it
//! no longer ends in an incomplete UTF-8 character (U+FFFD).

use super::Tokenizer;
use crate::error::Result;

/// A decoder that turns a stream of ids into text pieces; see [`Tokenizer::stream`].
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    /// Ids of the current window: `ids[..read]` were already turned into text.
    ids: Vec<u32>,
    /// `ids[prefix..read]` is the context the next piece is decoded after.
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub(crate) fn new(tok: &'a Tokenizer, context: &[u32]) -> TextStream<'a> {
        TextStream { tok, ids: context.to_vec(), prefix: 0, read: context.len() }
    }

    /// Feeds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tok.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let piece = match after.strip_prefix(before.as_str()) {
                Some(rest) => rest.to_string(),
                // The new token changed how the context decodes: emit what is new after the
                // common prefix (never happens with byte-level or SentencePiece decoders).
                None => after[common_prefix(&before, &after)..].to_string(),
            };
            self.advance();
            return Ok(piece);
        }
        Ok(String::new())
    }

    /// The text still held back (an incomplete character at the end of the stream), decoded
    /// with replacement characters; the stream starts afresh after it.
    pub fn finish(&mut self) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tok.decode(&self.ids[self.prefix..])?;
        self.advance();
        Ok(after[common_prefix(&before, &after)..].to_string())
    }

    fn advance(&mut self) {
        self.prefix = self.read;
        self.read = self.ids.len();
        // Keep the window short: ids before `prefix` are never looked at again.
        if self.prefix > 0 {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
    }
}

/// Byte length of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).find(|((_, ca), cb)| ca != cb).map(|((i, _), _)| i).unwrap_or(a.len().min(b.len()))
}
