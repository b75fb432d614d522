//! `import ember`: Ember's Python module (PyO3, stable ABI). A face of the engine: it turns
//! Python values into engine parameters and engine results and errors into Python values; every
//! model decision is the engine's (`ember-engine`).
//!
//! Everything that computes runs with the GIL released. Generation runs on its own thread
//! ([`ember_engine::Stream`]); the calling thread waits in short slices and checks for signals
//! between them, so Ctrl-C interrupts a long generation and other Python threads keep running.
//!
//! `model.rs` holds the `Model` class, `options.rs` the keyword arguments, `text_stream.rs` the
//! waiting loop and the streaming iterator, `errors.rs` the exceptions.

use pyo3::prelude::*;

mod errors;
mod model;
mod options;
mod text_stream;

#[pymodule(name = "ember")]
fn ember(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_class::<text_stream::TextStream>()?;
    errors::register(m)?;
    Ok(())
}
