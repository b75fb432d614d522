//! Answer bodies in OpenAI's shapes: `chat.completion` and `text_completion` objects, their
//! streamed chunks (`chat.completion.chunk`, `text_completion`), and the server-sent-events
//! framing (`data: {json}\n\n` … `data: [DONE]\n\n`).

use std::time::{SystemTime, UNIX_EPOCH};

use ember_engine::Done;
use serde_json::{json, Value};

/// Which endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What every object of one answer repeats: its id, creation time and model.
#[derive(Clone, Debug)]
pub struct Meta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    pub fn new(endpoint: Endpoint, model: &str, random: u64) -> Meta {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Meta { endpoint, id: format!("{prefix}-{random:016x}"), created: unix_now(), model: model.to_string() }
    }

    /// The complete answer of a non-streaming request.
    pub fn answer(&self, text: &str, done: &Done) -> Value {
        let finish = done.finish.openai();
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completion => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }),
        };
        let mut v = self.envelope(self.object(false), vec![choice]);
        v["usage"] = usage(done);
        v
    }

    /// A streamed chunk. For chat, `role` says whether the delta carries the assistant role (the
    /// first chunk does); `text` is `None` in the final chunk, which carries `finish`.
    pub fn chunk(&self, role: bool, text: Option<&str>, finish: Option<&str>, include_usage: bool) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
            Endpoint::Completion => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish })
            }
        };
        let mut v = self.envelope(self.object(true), vec![choice]);
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The last chunk when the client asked for `stream_options.include_usage`: no choices, the
    /// usage.
    pub fn usage_chunk(&self, done: &Done) -> Value {
        let mut v = self.envelope(self.object(true), vec![]);
        v["usage"] = usage(done);
        v
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }
}

pub fn usage(done: &Done) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    })
}

/// One server-sent event holding `v`.
pub fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The event that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_engine::FinishReason;

    #[test]
    fn shapes_follow_openai() {
        let done = Done { finish: FinishReason::Eos, prompt_tokens: 3, completion_tokens: 2 };
        let chat = Meta::new(Endpoint::Chat, "m", 1);
        let a = chat.answer("hi", &done);
        assert_eq!(a["object"], "chat.completion");
        assert_eq!(a["choices"][0]["message"]["content"], "hi");
        assert_eq!(a["choices"][0]["finish_reason"], "stop");
        assert_eq!(a["usage"]["total_tokens"], 5);
        let first = chat.chunk(true, Some(""), None, true);
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert!(first["usage"].is_null() && first.as_object().unwrap().contains_key("usage"));
        let last = chat.chunk(false, None, Some("length"), false);
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert!(!last.as_object().unwrap().contains_key("usage"));
        let text = Meta::new(Endpoint::Completion, "m", 2);
        assert_eq!(text.chunk(false, Some("x"), None, false)["object"], "text_completion");
        assert_eq!(text.usage_chunk(&done)["choices"], json!([]));
        assert!(text.id.starts_with("cmpl-"));
        assert_eq!(sse(&json!({"a": 1})), "data: {\"a\":1}\n\n");
    }
}
