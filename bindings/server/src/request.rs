//! Request bodies of `/v1/chat/completions` and `/v1/completions`, as OpenAI defines them
//! (<https://platform.openai.com/docs/api-reference/chat/create>), and their conversion to the
//! engine's [`GenerationParams`]. Fields Ember does not use (`tools`, `logprobs`, `user`, …) are
//! ignored, as OpenAI ignores unknown ones; `model` is accepted whatever it names, like
//! llama.cpp's server.

use ember_engine::chat::Message;
use ember_engine::generate::{GenerationParams, Overflow};
use ember_engine::sampling::{Penalties, SamplingParams, Strategy};
use serde::Deserialize;

use crate::error::ApiError;

/// The fields both endpoints read; `messages` belongs to chat, `prompt` to completions.
#[derive(Debug, Default, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub repeat_last_n: Option<usize>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u64>,
    /// llama.cpp's extension: keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `null` for an assistant turn that only called tools.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which Ember reads the text ones.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// A completion prompt: text, or token ids; OpenAI's batch forms (several prompts) are refused.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// What a completion request asks to continue.
#[derive(Debug, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl GenerateRequest {
    /// Parses a request body; a problem names the field (`max_tokens: invalid type: …`).
    pub fn parse(body: &[u8]) -> Result<GenerateRequest, ApiError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(format!("the request body is not valid JSON: {inner}"), None)
            } else if path == "." {
                ApiError::bad_request(format!("invalid request body: {inner}"), None)
            } else {
                let param = path.split(['.', '[']).next().unwrap_or(&path).to_string();
                ApiError::bad_request(format!("invalid value for `{path}`: {inner}"), Some(param))
            }
        })
    }

    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// The conversation of a chat request, as engine messages.
    pub fn chat_messages(&self) -> Result<Vec<Message>, ApiError> {
        let messages = self.messages.as_ref().ok_or_else(|| missing("messages"))?;
        if messages.is_empty() {
            return Err(ApiError::bad_request("`messages` must hold at least one message", Some("messages".into())));
        }
        messages.iter().enumerate().map(|(i, m)| Ok(Message::new(m.role.clone(), text_of(m, i)?))).collect()
    }

    /// The prompt of a completion request.
    pub fn completion_prompt(&self) -> Result<PromptInput, ApiError> {
        let one = |n: usize| {
            ApiError::bad_request(
                format!("`prompt` holds {n} prompts; Ember answers one prompt per request"),
                Some("prompt".into()),
            )
        };
        match self.prompt.as_ref().ok_or_else(|| missing("prompt"))? {
            Prompt::Text(t) => Ok(PromptInput::Text(t.clone())),
            Prompt::Tokens(ids) => Ok(PromptInput::Tokens(ids.clone())),
            Prompt::Texts(v) if v.len() == 1 => Ok(PromptInput::Text(v[0].clone())),
            Prompt::Texts(v) => Err(one(v.len())),
            Prompt::TokenLists(v) if v.len() == 1 => Ok(PromptInput::Tokens(v[0].clone())),
            Prompt::TokenLists(v) => Err(one(v.len())),
        }
    }

    /// The engine's parameters for this request. Absent fields take the engine's defaults
    /// (llama.cpp's sampler chain); an absent `max_tokens` lets the answer run to the end of
    /// the context; an absent `seed` is `random_seed`. The engine checks the numbers' ranges.
    pub fn params(&self, ctx: usize, random_seed: u64) -> Result<GenerationParams, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(
                format!("`n` = {n} is not supported: Ember returns one choice per request"),
                Some("n".into()),
            ));
        }
        let defaults = SamplingParams::default();
        let (temperature, top_k, top_p, min_p) = match defaults.strategy {
            Strategy::Sample { temperature, top_k, top_p, min_p } => (temperature, top_k, top_p, min_p),
            Strategy::Greedy => (0.0, 0, 1.0, 0.0),
        };
        let temperature = self.temperature.unwrap_or(temperature);
        let strategy = Strategy::Sample {
            temperature,
            top_k: self.top_k.unwrap_or(top_k),
            top_p: self.top_p.unwrap_or(top_p),
            min_p: self.min_p.unwrap_or(min_p),
        }
        .canonical();
        let p = defaults.penalties;
        let penalties = Penalties {
            repeat: self.repeat_penalty.unwrap_or(p.repeat),
            presence: self.presence_penalty.unwrap_or(p.presence),
            frequency: self.frequency_penalty.unwrap_or(p.frequency),
            last_n: self.repeat_last_n.unwrap_or(p.last_n),
        };
        let seed = match &self.seed {
            None => random_seed,
            Some(n) => seed_of(n)?,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad_request("`stop` strings must not be empty", Some("stop".into())));
        }
        Ok(GenerationParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(ctx),
            sampling: SamplingParams { strategy, penalties, seed },
            stop,
            stop_at_eos: !self.ignore_eos.unwrap_or(false),
            overflow: Overflow::Error,
        })
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(format!("missing required field `{field}`"), Some(field.into()))
}

/// The text of message `i`: its string, or its text parts joined.
fn text_of(m: &ChatMessage, i: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            format!("content part of type `{kind}` is not supported (text parts only)"),
                            Some(format!("messages[{i}].content[{j}]")),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// A seed is any integer; negative ones are taken as their two's-complement bits.
fn seed_of(n: &serde_json::Number) -> Result<u64, ApiError> {
    n.as_u64()
        .or_else(|| n.as_i64().map(|i| i as u64))
        .ok_or_else(|| ApiError::bad_request(format!("`seed` must be an integer, not {n}"), Some("seed".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<GenerateRequest, ApiError> {
        GenerateRequest::parse(s.as_bytes())
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(r#"{"prompt": "x", "max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(e.message.contains("max_tokens"), "{}", e.message);
        let e = parse(r#"{"prompt": "x", "stop": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        assert!(parse("{not json").unwrap_err().message.contains("not valid JSON"));
        assert!(parse("[1, 2]").is_err());
    }

    #[test]
    fn unknown_fields_and_nulls_are_ignored() {
        let r = parse(r#"{"prompt": "x", "logprobs": null, "tools": [], "temperature": null, "n": 1}"#).unwrap();
        let p = r.params(100, 7).unwrap();
        assert_eq!(p.sampling.seed, 7);
        assert_eq!(p.max_tokens, 100);
        assert_eq!(p.sampling.strategy, Strategy::default());
    }

    #[test]
    fn parameters_map_to_the_engine() {
        let r = parse(
            r#"{"prompt": ["x"], "temperature": 0.5, "top_k": 3, "top_p": 0.9, "min_p": 0.1, "seed": -1,
                "max_tokens": 5, "max_completion_tokens": 6, "stop": "\n", "presence_penalty": 0.5}"#,
        )
        .unwrap();
        assert_eq!(r.completion_prompt().unwrap(), PromptInput::Text("x".into()));
        let p = r.params(100, 7).unwrap();
        assert_eq!(p.sampling.strategy, Strategy::Sample { temperature: 0.5, top_k: 3, top_p: 0.9, min_p: 0.1 });
        assert_eq!(p.sampling.seed, u64::MAX);
        assert_eq!(p.max_tokens, 6);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.sampling.penalties.presence, 0.5);
        let greedy = parse(r#"{"prompt": [1, 2], "temperature": 0, "stop": ["a", "b"]}"#).unwrap();
        assert_eq!(greedy.params(10, 0).unwrap().sampling.strategy, Strategy::Greedy);
        assert_eq!(greedy.completion_prompt().unwrap(), PromptInput::Tokens(vec![1, 2]));
    }

    #[test]
    fn refusals_name_the_parameter() {
        let r = parse(r#"{"prompt": "x", "n": 2}"#).unwrap();
        assert_eq!(r.params(10, 0).unwrap_err().param.as_deref(), Some("n"));
        let r = parse(r#"{"prompt": ["a", "b"]}"#).unwrap();
        assert_eq!(r.completion_prompt().unwrap_err().param.as_deref(), Some("prompt"));
        let r = parse(r#"{"messages": []}"#).unwrap();
        assert_eq!(r.chat_messages().unwrap_err().param.as_deref(), Some("messages"));
        let r = parse(r#"{"prompt": "x"}"#).unwrap();
        assert_eq!(r.chat_messages().unwrap_err().param.as_deref(), Some("messages"));
        let r = parse(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#).unwrap();
        assert!(r.chat_messages().unwrap_err().message.contains("image_url"));
    }

    #[test]
    fn text_parts_are_joined() {
        let r = parse(r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                                        {"role": "assistant", "content": null}]}"#)
        .unwrap();
        assert_eq!(r.chat_messages().unwrap(), vec![Message::new("user", "ab"), Message::new("assistant", "")]);
    }
}
