//! Generation as a streaming iterator: a [`Session`] owns one sequence's KV cache; each call to
//! [`Session::generate`] feeds a prompt (reusing the cached prefix it shares with the previous
//! one, so a multi-turn chat only computes its new tokens) and returns a [`Generation`], an
//! iterator of [`Piece`]s. Dropping the iterator cancels the generation.

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::model::Logits;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::TextStream;

/// What to do with a prompt longer than the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// A clear error (the default).
    #[default]
    Error,
    /// Drop the oldest prompt tokens, keeping room for the answer.
    TruncateStart,
}

#[derive(Clone, Debug)]
pub struct GenerationParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// End at the model's end-of-generation tokens (EOS, end of turn).
    pub stop_at_eos: bool,
    pub overflow: Overflow,
}

impl Default for GenerationParams {
    /// 256 tokens, llama.cpp's sampling defaults, ending at EOS, no stop strings, overflow is an
    /// error.
    fn default() -> Self {
        GenerationParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_at_eos: true,
            overflow: Overflow::Error,
        }
    }
}

impl GenerationParams {
    /// Arg-max decoding of at most `max_tokens` tokens, ending at EOS.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerationParams { max_tokens, sampling: SamplingParams::greedy(), ..GenerationParams::default() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string was produced.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    ContextFull,
}

impl FinishReason {
    /// The OpenAI-style name ("stop" or "length").
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
        }
    }
}

/// One generated token and the text it completes (empty while a UTF-8 character or a possible
/// stop string is still incomplete; the text is released by a later piece).
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub token: u32,
    pub text: String,
}

pub struct Session<'e> {
    engine: &'e Engine,
    cache: KvCache,
    tokens: Vec<u32>, // the tokens whose keys/values are in `cache`
}

impl<'e> Session<'e> {
    pub(crate) fn new(engine: &'e Engine) -> Session<'e> {
        Session { engine, cache: engine.model.new_cache(engine.ctx()), tokens: Vec::new() }
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Tokens currently held in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Starts generating after `prompt` (the whole prompt, not only its new part).
    pub fn generate(&mut self, prompt: &[u32], params: &GenerationParams) -> Result<Generation<'_, 'e>> {
        if prompt.is_empty() {
            return Err(EngineError::Param { name: "prompt", problem: "the prompt is empty".into() });
        }
        let ctx = self.cache.ctx();
        let prompt = match (prompt.len() >= ctx, params.overflow) {
            (false, _) => prompt,
            (true, Overflow::Error) => return Err(EngineError::ContextOverflow { prompt: prompt.len(), ctx }),
            (true, Overflow::TruncateStart) => {
                let keep = ctx.saturating_sub(params.max_tokens.min(ctx / 2)).max(1);
                &prompt[prompt.len() - keep..]
            }
        };
        let sampler = Sampler::new(params.sampling.clone())?;
        // Reuse the cached prefix; at least one prompt token is always run to get logits.
        let shared = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        self.cache.truncate(shared);
        self.tokens.truncate(shared);
        let prompt_len = prompt.len();
        let pending = prompt[shared..].to_vec();
        let history = prompt.to_vec();
        let stream = self.engine.tokenizer.stream_after(prompt);
        Ok(Generation {
            session: self,
            params: params.clone(),
            sampler,
            stream,
            pending,
            history,
            prompt_len,
            generated: 0,
            held: String::new(),
            finish: None,
        })
    }
}

/// A running generation; iterate to get pieces. `finish_reason()` says why it ended.
pub struct Generation<'s, 'e> {
    session: &'s mut Session<'e>,
    params: GenerationParams,
    sampler: Sampler,
    stream: TextStream<'e>,
    pending: Vec<u32>, // tokens to run before sampling next
    history: Vec<u32>, // prompt and generated tokens, for penalties
    prompt_len: usize,
    generated: usize,
    held: String, // text held back because it may begin a stop string
    finish: Option<FinishReason>,
}

impl Generation<'_, '_> {
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Prompt tokens and generated tokens so far.
    pub fn usage(&self) -> (usize, usize) {
        (self.prompt_len, self.generated)
    }

    fn step(&mut self) -> Result<Option<Piece>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if self.generated >= self.params.max_tokens {
            return Ok(self.end(FinishReason::Length));
        }
        let s = &mut *self.session;
        if s.cache.len() + self.pending.len() > s.cache.ctx() {
            return Ok(self.end(FinishReason::ContextFull));
        }
        let logits = s.engine.forward(&self.pending, &mut s.cache, Logits::Last)?;
        s.tokens.append(&mut self.pending);
        let token = self.sampler.sample(&logits, &self.history);
        if self.params.stop_at_eos && s.engine.tokenizer.is_end_of_generation(token) {
            return Ok(self.end(FinishReason::Eos));
        }
        self.generated += 1;
        self.history.push(token);
        self.pending.push(token);
        self.held.push_str(&self.stream.push(token)?);
        if let Some(cut) = self.params.stop.iter().filter_map(|p| self.held.find(p.as_str())).min() {
            self.held.truncate(cut);
            let text = std::mem::take(&mut self.held);
            self.finish = Some(FinishReason::Stop);
            return Ok(Some(Piece { token, text }));
        }
        let keep = held_back(&self.held, &self.params.stop);
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Ok(Some(Piece { token, text }))
    }

    /// Ends the generation; text still held back is released (as a piece without a new token
    /// when there is any).
    fn end(&mut self, reason: FinishReason) -> Option<Piece> {
        self.finish = Some(reason);
        let rest = self.stream.finish().unwrap_or_default();
        self.held.push_str(&rest);
        let text = std::mem::take(&mut self.held);
        let last = *self.history.last().unwrap_or(&0);
        (!text.is_empty()).then_some(Piece { token: last, text })
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(p) => p.map(Ok),
            Err(e) => {
                self.finish = Some(FinishReason::Stop);
                Some(Err(e))
            }
        }
    }
}

/// Bytes at the end of `text` that could begin one of the stop strings.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for s in stops {
        for n in (1..s.len().min(text.len() + 1)).rev() {
            if n > keep && text.is_char_boundary(text.len() - n) && s.as_bytes().starts_with(&text.as_bytes()[text.len() - n..]) {
                keep = n;
                break;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec!["</end>".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello </e", &stops), 3);
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("", &stops), 0);
    }
}
