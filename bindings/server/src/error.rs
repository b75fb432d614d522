//! Errors: [`ApiError`] is an HTTP answer in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`); [`ServerError`] is why the server could not
//! start or stopped.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ember_engine::EngineError;
use serde_json::{json, Value};
use thiserror::Error;

/// Why `run` failed.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot start the server's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
    #[error("invalid option `{name}`: {problem}")]
    Option { name: &'static str, problem: String },
}

/// An error answer to one request.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param, code: None }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into(), kind: "invalid_request_error", param: None, code: None }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The engine's error as an answer: problems with the request (a prompt longer than the
    /// context, a parameter out of range, a conversation the chat template refuses, unknown token
    /// ids) are 400; anything else is the server's fault, 500.
    pub fn from_engine(e: &EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::ContextOverflow { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::bad_request(message, None)
            },
            EngineError::Param { name, .. } => ApiError::bad_request(message, Some((*name).into())),
            EngineError::Template(_) => ApiError::bad_request(message, Some("messages".into())),
            EngineError::Tokenizer(_) => ApiError::bad_request(message, None),
            _ => ApiError::internal(message),
        }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
