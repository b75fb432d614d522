//! Generation slots and the bridge from the engine's blocking [`Stream`] to async code.
//!
//! A request first waits for one of `--parallel` slots (requests beyond wait in line, they are
//! not refused), then a blocking task runs its own [`Stream`] (its own session and KV cache, so
//! requests never share state) and forwards each event into a tokio channel. When the reader
//! goes away — the client disconnected, the handler was dropped — the next forward fails, the
//! task drops the `Stream` (which cancels the generation and frees its cache) and only then gives
//! the slot back.

use std::sync::Arc;

use ember_engine::{Done, Engine, Event, GenerationParams, Stream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Events buffered between a generation and a slow client (the engine buffers more).
const BUFFER: usize = 16;

/// The `--parallel` generation slots.
#[derive(Clone, Debug)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    size: usize,
}

impl Slots {
    pub fn new(size: usize) -> Slots {
        Slots { semaphore: Arc::new(Semaphore::new(size)), size }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots held by running generations.
    pub fn busy(&self) -> usize {
        self.size - self.semaphore.available_permits()
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.semaphore.clone().acquire_owned().await.map_err(|_| ApiError::internal("the server is shutting down"))
    }
}

/// The events of one running generation; dropping it cancels the generation.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// Waits for a slot, then starts generating after `prompt`.
    pub async fn start(
        engine: Arc<Engine>,
        slots: &Slots,
        prompt: Vec<u32>,
        params: GenerationParams,
    ) -> Result<Events, ApiError> {
        let permit = slots.acquire().await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::task::spawn_blocking(move || forward(engine, prompt, params, tx, permit));
        Ok(Events { rx })
    }

    /// The next event; `None` once the generation has ended (after its `Done` or `Error`).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The whole answer: its text and how it ended.
    pub async fn collect(mut self) -> Result<(String, Done), ApiError> {
        let mut text = String::new();
        while let Some(ev) = self.next().await {
            match ev {
                Event::Piece(p) => text.push_str(&p.text),
                Event::Done(d) => return Ok((text, d)),
                Event::Error(e) => return Err(ApiError::from_engine(&e)),
            }
        }
        Err(ended_early())
    }
}

/// The error for a generation that stopped without saying how.
pub fn ended_early() -> ApiError {
    ApiError::internal("the generation ended without a result")
}

/// Runs on a blocking thread: one `Stream`, its events forwarded until it ends or the reader is
/// gone. The stream is dropped (generation cancelled, memory freed) before the slot is released.
fn forward(
    engine: Arc<Engine>,
    prompt: Vec<u32>,
    params: GenerationParams,
    tx: mpsc::Sender<Event>,
    permit: OwnedSemaphorePermit,
) {
    let mut stream = Stream::spawn(engine, prompt, params);
    for ev in &mut stream {
        if tx.blocking_send(ev).is_err() {
            break;
        }
    }
    drop(stream);
    drop(permit);
}
