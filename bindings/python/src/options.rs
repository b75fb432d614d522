//! Keyword arguments → engine parameters. `generate`, `chat` and `generate_batch` share one set
//! of generation keywords, read here from `**kwargs` so that their names, defaults and checks
//! live in one place (the stub file `ember.pyi` spells out the signatures).

use ember_engine::generate::{GenerationParams, Overflow};
use ember_engine::sampling::{Penalties, SamplingParams, Strategy};
use ember_engine::placement::{parse_size, Offload};
use ember_kernels::backend::DeviceSpec;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::errors::engine_err;

/// A generation call's parameters and whether it streams.
pub struct GenOptions {
    pub params: GenerationParams,
    pub stream: bool,
}

/// The generation keywords and their defaults (llama.cpp's sampling defaults).
struct Knobs {
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: usize,
    presence_penalty: f32,
    frequency_penalty: f32,
    seed: Option<u64>,
    stop: Vec<String>,
    ignore_eos: bool,
    stream: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            max_tokens: 256,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
            stream: false,
        }
    }
}

impl GenOptions {
    /// Reads the generation keywords of `func` (named in errors); `stream` is accepted only
    /// where `can_stream`. Unknown keywords are a `TypeError`, bad values a `ValueError` or
    /// `TypeError` naming the keyword.
    pub fn from_kwargs(func: &str, kwargs: Option<&Bound<'_, PyDict>>, can_stream: bool) -> PyResult<GenOptions> {
        let mut k = Knobs::default();
        for (key, value) in kwargs.into_iter().flat_map(|d| d.iter()) {
            let key: String = key.extract()?;
            let v = &value;
            match key.as_str() {
                "max_tokens" => k.max_tokens = whole(v, "max_tokens")?,
                "temperature" => k.temperature = number(v, "temperature")?,
                "top_k" => k.top_k = whole(v, "top_k")?,
                "top_p" => k.top_p = number(v, "top_p")?,
                "min_p" => k.min_p = number(v, "min_p")?,
                "repeat_penalty" => k.repeat_penalty = number(v, "repeat_penalty")?,
                "repeat_last_n" => k.repeat_last_n = whole(v, "repeat_last_n")?,
                "presence_penalty" => k.presence_penalty = number(v, "presence_penalty")?,
                "frequency_penalty" => k.frequency_penalty = number(v, "frequency_penalty")?,
                "seed" => k.seed = optional(v, |v| whole(v, "seed"))?,
                "stop" => k.stop = optional(v, stop_strings)?.unwrap_or_default(),
                "ignore_eos" => k.ignore_eos = flag(v, "ignore_eos")?,
                "stream" if can_stream => k.stream = flag(v, "stream")?,
                other => return Err(PyTypeError::new_err(format!("{func}() got an unexpected keyword argument '{other}'"))),
            }
        }
        let sampling = SamplingParams {
            strategy: Strategy::Sample { temperature: k.temperature, top_k: k.top_k, top_p: k.top_p, min_p: k.min_p }
                .canonical(),
            penalties: Penalties {
                repeat: k.repeat_penalty,
                presence: k.presence_penalty,
                frequency: k.frequency_penalty,
                last_n: k.repeat_last_n,
            },
            seed: k.seed.unwrap_or_else(rand::random),
        };
        // Checked here, not on the generation thread, so a bad value fails the call itself.
        sampling.validate().map_err(engine_err)?;
        let params = GenerationParams {
            max_tokens: k.max_tokens,
            sampling,
            stop: k.stop,
            stop_at_eos: !k.ignore_eos,
            overflow: Overflow::Error,
        };
        Ok(GenOptions { params, stream: k.stream })
    }
}

/// What `Model(gpu=…, vram=…, offload=…)` asks of the device, read as the CLI reads
/// `--gpu`, `--vram` and `--offload`.
pub struct DeviceOptions {
    pub gpu: DeviceSpec,
    pub vram: Option<u64>,
    pub offload: Offload,
}

impl DeviceOptions {
    /// `gpu`: "auto", "cpu"/"none", "cuda:N", "wgpu:N" or "host"; `vram`: bytes as an int or a
    /// size with a unit ("512MiB", "3.5GiB", "8GB"); `offload`: "neurons" or "layers".
    pub fn read(gpu: &str, vram: Option<&Bound<'_, PyAny>>, offload: &str) -> PyResult<DeviceOptions> {
        let gpu = gpu.parse::<DeviceSpec>().map_err(|e| PyValueError::new_err(format!("gpu={gpu:?}: {e}")))?;
        let vram = match vram {
            None => None,
            Some(v) if v.is_instance_of::<PyString>() => {
                let text: String = v.extract()?;
                Some(parse_size(&text).map_err(|e| PyValueError::new_err(format!("vram={text:?}: {e}")))?)
            }
            Some(v) if v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyBool>() => Some(
                v.extract::<u64>().map_err(|_| PyValueError::new_err(format!("vram={v}: a size in bytes must be ≥ 0")))?,
            ),
            Some(v) => {
                return Err(PyTypeError::new_err(format!(
                    "`vram` must be bytes as an int or a size such as \"512MiB\", got {}",
                    type_name(v)
                )))
            }
        };
        let offload = offload.parse::<Offload>().map_err(|e| PyValueError::new_err(format!("offload={offload:?}: {e}")))?;
        Ok(DeviceOptions { gpu, vram, offload })
    }
}

/// `None` → `None`, anything else through `read`.
pub fn optional<'py, T>(v: &Bound<'py, PyAny>, read: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>) -> PyResult<Option<T>> {
    if v.is_none() {
        Ok(None)
    } else {
        read(v).map(Some)
    }
}

/// A whole number ≥ 0 (`TypeError` for a non-integer, `ValueError` for a negative one).
pub fn whole<'py, T: for<'a> FromPyObject<'a, 'py>>(v: &Bound<'py, PyAny>, name: &str) -> PyResult<T> {
    if !v.is_instance_of::<PyInt>() || v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("`{name}` must be an int, got {}", type_name(v))));
    }
    v.extract::<T>().map_err(|_| PyValueError::new_err(format!("`{name}` must be a whole number ≥ 0 that fits, got {v}")))
}

fn number(v: &Bound<'_, PyAny>, name: &str) -> PyResult<f32> {
    if !(v.is_instance_of::<PyFloat>() || v.is_instance_of::<PyInt>()) || v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("`{name}` must be a number, got {}", type_name(v))));
    }
    Ok(v.extract::<f64>()? as f32)
}

fn flag(v: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    v.extract::<bool>().map_err(|_| PyTypeError::new_err(format!("`{name}` must be True or False, got {}", type_name(v))))
}

/// `stop`: one string or a list of strings, none of them empty.
fn stop_strings(v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let stops: Vec<String> = if v.is_instance_of::<PyString>() {
        vec![v.extract()?]
    } else {
        v.extract().map_err(|_| PyTypeError::new_err(format!("`stop` must be a str or a list of str, got {}", type_name(v))))?
    };
    if stops.iter().any(String::is_empty) {
        return Err(PyValueError::new_err("`stop` strings must not be empty"));
    }
    Ok(stops)
}

pub fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
