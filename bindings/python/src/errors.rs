//! The module's exceptions and how engine errors become them.
//!
//! - `ember.EmberError(Exception)`: any error the engine reports (bad model file, a prompt longer
//!   than the context, a tokenizer or template failure); the message is the engine's, naming the
//!   file, the field or the parameter.
//! - `ember.ModelNotFoundError(EmberError, FileNotFoundError)`: the model path does not exist.
//! - `ValueError` / `TypeError`: bad arguments, caught by the module or by the engine's checks
//!   (`invalid parameter …`).

use std::io::ErrorKind;

use ember_engine::EngineError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

create_exception!(
    ember,
    EmberError,
    PyException,
    "An error reported by Ember's engine; the message names the file, field or parameter and the problem."
);

/// `ModelNotFoundError` derives from two built-in-based classes, which `create_exception!`
/// cannot express: it is made once with `type(name, bases, dict)`.
static MODEL_NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EmberError", py.get_type::<EmberError>())?;
    m.add("ModelNotFoundError", model_not_found(py)?)?;
    Ok(())
}

fn model_not_found(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    let ty = MODEL_NOT_FOUND.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<EmberError>(), py.get_type::<PyFileNotFoundError>()])?;
        let dict = PyDict::new(py);
        dict.set_item("__module__", "ember")?;
        dict.set_item("__doc__", "The model path names no existing file or folder (and no known model).")?;
        let made = py.get_type::<PyType>().call1(("ModelNotFoundError", bases, dict))?;
        Ok(made.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py).clone())
}

/// The Python exception for an engine error, carrying the engine's message.
pub fn engine_err(e: EngineError) -> PyErr {
    let message = e.to_string();
    let missing = match &e {
        // `hub::resolve_model`: neither an existing path nor a known model name.
        EngineError::Param { name: "model", .. } => true,
        EngineError::Io { source, .. } => source.kind() == ErrorKind::NotFound,
        _ => false,
    };
    if missing {
        return Python::attach(|py| match model_not_found(py) {
            Ok(ty) => PyErr::from_type(ty, (message,)),
            Err(err) => err,
        });
    }
    match e {
        EngineError::Param { .. } => PyValueError::new_err(message),
        _ => EmberError::new_err(message),
    }
}
