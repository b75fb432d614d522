//! Waiting for a generation ([`ember_engine::Stream`], running on its own thread) from Python:
//! the caller waits with the GIL released, in slices of [`SLICE`], and checks for signals between
//! slices, so Ctrl-C (KeyboardInterrupt) interrupts it; an interrupted generation is cancelled
//! before the exception propagates. [`collect`] reads a whole answer; [`TextStream`] is the
//! iterator `generate(…, stream=True)` returns.

use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use ember_engine::{Done, EngineError, Event, FinishReason, Stream};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::errors::engine_err;

/// How long the caller waits without the GIL before it looks at signals.
pub const SLICE: Duration = Duration::from_millis(50);

/// Cancels `stream` and waits for its thread (at most one token) with the GIL released.
fn cancel(py: Python<'_>, stream: Stream) {
    py.detach(move || drop(stream));
}

/// The whole answer's text. Between slices of waiting, signal handlers run; if one raises
/// (KeyboardInterrupt), the generation is cancelled and the exception returned.
pub fn collect(py: Python<'_>, mut stream: Stream) -> PyResult<(String, Done)> {
    let mut text = String::new();
    loop {
        let ended = py.detach(|| drain(&mut stream, &mut text, Instant::now() + SLICE));
        match ended {
            Some(Ok(done)) => return Ok((text, done)),
            Some(Err(e)) => return Err(engine_err(e)),
            None => {
                if let Err(interrupt) = py.check_signals() {
                    cancel(py, stream);
                    return Err(interrupt);
                }
            }
        }
    }
}

/// Appends pieces to `text` until the generation ends (`Some`) or `deadline` passes (`None`).
fn drain(stream: &mut Stream, text: &mut String, deadline: Instant) -> Option<Result<Done, EngineError>> {
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match stream.recv_timeout(wait) {
            Ok(Some(Event::Piece(p))) => text.push_str(&p.text),
            Ok(Some(Event::Done(d))) => return Some(Ok(d)),
            Ok(Some(Event::Error(e))) => return Some(Err(e)),
            Ok(None) => return None,
            Err(()) => return Some(Err(ended_early())),
        }
        if wait.is_zero() {
            return None;
        }
    }
}

fn ended_early() -> EngineError {
    EngineError::Param { name: "stream", problem: "the generation thread ended without a result".into() }
}

/// The pieces of text of one generation, as they are produced (`generate(…, stream=True)`).
/// Empty pieces are skipped. After the last piece, `finish_reason`, `prompt_tokens` and
/// `completion_tokens` say how it ended; `close()` (or leaving a `with` block, or dropping the
/// iterator) cancels the generation.
#[pyclass(module = "ember", name = "TextStream")]
pub struct TextStream {
    state: Mutex<State>,
}

struct State {
    stream: Option<Stream>, // None once ended, failed or cancelled
    done: Option<Done>,
}

impl TextStream {
    pub fn new(stream: Stream) -> TextStream {
        TextStream { state: Mutex::new(State { stream: Some(stream), done: None }) }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> PyResult<R>) -> PyResult<R> {
        // Waiting on the lock with the GIL held could deadlock with the holder, which re-takes
        // the GIL to check signals: a second concurrent reader is an error instead, as for a
        // running Python generator.
        match self.state.try_lock() {
            Ok(mut s) => f(&mut s),
            Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err("this TextStream is being read by another thread")),
        }
    }

    fn done(&self) -> PyResult<Option<Done>> {
        self.with_state(|s| Ok(s.done))
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next non-empty piece of text; `None` ends the iteration (StopIteration).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with_state(|s| loop {
            let Some(stream) = s.stream.as_mut() else { return Ok(None) };
            let event = py.detach(|| stream.recv_timeout(SLICE));
            match event {
                Ok(Some(Event::Piece(p))) if p.text.is_empty() => {}
                Ok(Some(Event::Piece(p))) => return Ok(Some(p.text)),
                Ok(Some(Event::Done(d))) => {
                    s.done = Some(d);
                    s.stream = None;
                    return Ok(None);
                }
                Ok(Some(Event::Error(e))) => {
                    s.stream = None;
                    return Err(engine_err(e));
                }
                Ok(None) => {}
                Err(()) => {
                    s.stream = None;
                    return Err(engine_err(ended_early()));
                }
            }
            if let Err(interrupt) = py.check_signals() {
                if let Some(stream) = s.stream.take() {
                    cancel(py, stream);
                }
                return Err(interrupt);
            }
        })
    }

    /// Cancels the generation (pieces not read yet are dropped). Safe to call twice.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let stream = self.with_state(|s| Ok(s.stream.take()))?;
        if let Some(stream) = stream {
            cancel(py, stream);
        }
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// Why the generation ended: "eos" (end-of-turn token), "stop" (a stop string), "length"
    /// (`max_tokens`), "context" (the context is full); `None` until it has ended.
    #[getter]
    fn finish_reason(&self) -> PyResult<Option<&'static str>> {
        Ok(self.done()?.map(|d| finish_name(d.finish)))
    }

    /// Tokens in the prompt; `None` until the generation has ended.
    #[getter]
    fn prompt_tokens(&self) -> PyResult<Option<usize>> {
        Ok(self.done()?.map(|d| d.prompt_tokens))
    }

    /// Tokens generated; `None` until the generation has ended.
    #[getter]
    fn completion_tokens(&self) -> PyResult<Option<usize>> {
        Ok(self.done()?.map(|d| d.completion_tokens))
    }
}

pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContextFull => "context",
    }
}
