//! A generation on its own thread: [`Stream::spawn`] runs a [`Session`](crate::generate::Session)
//! over a shared [`Engine`] and hands [`Event`]s to the caller through a bounded channel. This is
//! what faces that cannot hold a borrowing iterator use — a Python iterator, an HTTP response
//! body, a daemon's task queue. Cancelling (or dropping the stream) stops the generation at the
//! next token and frees its KV cache before `cancel`/`drop` returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::generate::{FinishReason, GenerationParams, Piece};

/// What a [`Stream`] yields: pieces of text, then exactly one `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    Piece(Piece),
    Done(Done),
    Error(EngineError),
}

/// How a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub finish: FinishReason,
    /// Tokens in the prompt (after any truncation) and tokens generated.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A generation running on its own thread. Iterate (blocking) or poll with
/// [`recv_timeout`](Stream::recv_timeout); the iterator ends after `Done` or `Error`.
pub struct Stream {
    rx: Option<Receiver<Event>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Pieces buffered between the generating thread and a slow reader.
const BUFFER: usize = 64;

impl Stream {
    /// Starts generating after `prompt` (token ids, see [`Engine::encode_prompt`]).
    pub fn spawn(engine: Arc<Engine>, prompt: Vec<u32>, params: GenerationParams) -> Stream {
        let (tx, rx) = mpsc::sync_channel(BUFFER);
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("ember-generate".into())
            .spawn(move || run(&engine, &prompt, &params, &flag, &tx))
            .map_err(|e| EngineError::Param { name: "threads", problem: format!("cannot start a generation thread: {e}") });
        match thread {
            Ok(t) => Stream { rx: Some(rx), cancel, thread: Some(t) },
            Err(e) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let _ = tx.send(Event::Error(e));
                Stream { rx: Some(rx), cancel, thread: None }
            }
        }
    }

    /// Asks the generation to stop; it does at the next token. Events already produced can still
    /// be read.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` means none arrived in time,
    /// `Err(())` that the stream has ended.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> std::result::Result<Option<Event>, ()> {
        let Some(rx) = &self.rx else { return Err(()) };
        match rx.recv_timeout(timeout) {
            Ok(ev) => {
                if matches!(ev, Event::Done(_) | Event::Error(_)) {
                    self.rx = None;
                }
                Ok(Some(ev))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.rx = None;
                Err(())
            }
        }
    }

    /// Reads the whole answer: its text and how it ended.
    pub fn collect_text(self) -> Result<(String, Done)> {
        let mut text = String::new();
        for ev in self {
            match ev {
                Event::Piece(p) => text.push_str(&p.text),
                Event::Done(d) => return Ok((text, d)),
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Param { name: "stream", problem: "the generation thread ended without a result".into() })
    }
}

impl Iterator for Stream {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let ev = self.rx.as_ref()?.recv().ok();
        if !matches!(ev, Some(Event::Piece(_))) {
            self.rx = None;
        }
        ev
    }
}

impl Drop for Stream {
    /// Cancels the generation and waits for its thread, so its memory is freed on return.
    fn drop(&mut self) {
        self.cancel();
        self.rx = None; // unblocks a thread waiting to send
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(engine: &Engine, prompt: &[u32], params: &GenerationParams, cancel: &AtomicBool, tx: &SyncSender<Event>) {
    let mut session = engine.session();
    let mut gen = match session.generate(prompt, params) {
        Ok(g) => g,
        Err(e) => {
            let _ = tx.send(Event::Error(e));
            return;
        }
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        match gen.next() {
            Some(Ok(piece)) => {
                if tx.send(Event::Piece(piece)).is_err() {
                    return; // the reader is gone
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Event::Error(e));
                return;
            }
            None => break,
        }
    }
    let (prompt_tokens, completion_tokens) = gen.usage();
    let finish = gen.finish_reason().unwrap_or(FinishReason::Stop);
    let _ = tx.send(Event::Done(Done { finish, prompt_tokens, completion_tokens }));
}
