//! `ember.Model`: a loaded model (an `Arc<Engine>`, shared by every generation running on it).

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;

use ember_engine::chat::Message;
use ember_engine::eval::{self, PerplexityParams};
use ember_engine::sparsity::{Criterion, SparsityOptions};
use ember_engine::{hub, Engine, EngineOptions, Stream};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::IntoPyObjectExt;

use crate::errors::engine_err;
use crate::options::{type_name, whole, DeviceOptions, GenOptions};
use crate::text_stream::{collect, TextStream, SLICE};

/// A model opened for generation: a GGUF file, a Hugging Face folder or a known model name;
/// `None` is the default model (downloaded into the Ember cache on first use).
#[pyclass(module = "ember", frozen)]
pub struct Model {
    engine: Arc<Engine>,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path=None, *, vram=None, gpu="auto", offload="neurons", profile=None, sparsity=None, criterion=None, threads=None, ctx=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        vram: Option<&Bound<'_, PyAny>>,
        gpu: &str,
        offload: &str,
        profile: Option<PathBuf>,
        sparsity: Option<f32>,
        criterion: Option<&str>,
        threads: Option<&Bound<'_, PyAny>>,
        ctx: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Model> {
        let device = DeviceOptions::read(gpu, vram, offload)?;
        let criterion = criterion
            .map(|c| {
                Criterion::parse(c).ok_or_else(|| {
                    PyValueError::new_err(format!("criterion={c:?} is not a criterion: use one of {}", Criterion::names()))
                })
            })
            .transpose()?;
        let options = EngineOptions {
            ctx: ctx.map(|v| whole(v, "ctx")).transpose()?,
            threads: threads.map(|v| whole(v, "threads")).transpose()?,
            sparsity: SparsityOptions { profile, sparsity, criterion },
            gpu: device.gpu,
            vram: device.vram,
            offload: device.offload,
        };
        let name = match &path {
            None => None,
            Some(p) => Some(
                p.to_str().ok_or_else(|| PyValueError::new_err(format!("the model path {p:?} is not valid UTF-8")))?,
            ),
        };
        let engine = py
            .detach(|| hub::resolve_model(name).and_then(|path| Engine::open(&path, &options)))
            .map_err(engine_err)?;
        // The device chosen, or why the model stays on the CPU: one line each, as the CLI says it.
        for note in &engine.notes {
            eprintln!("ember: {note}");
        }
        Ok(Model { engine: Arc::new(engine) })
    }

    /// The text generated after `prompt` (used as it is: no chat template), or with
    /// `stream=True` an iterator of its pieces.
    #[pyo3(signature = (prompt, **kwargs))]
    fn generate(&self, py: Python<'_>, prompt: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let opts = GenOptions::from_kwargs("generate", kwargs, true)?;
        self.run(py, prompt, opts)
    }

    /// The assistant's answer to `messages` (a list of {"role": …, "content": …} dicts),
    /// rendered with the model's chat template; `stream=True` gives an iterator of pieces.
    #[pyo3(signature = (messages, **kwargs))]
    fn chat(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        let opts = GenOptions::from_kwargs("chat", kwargs, true)?;
        let messages = read_messages(messages)?;
        let prompt = self.engine.render_chat(&messages).map_err(engine_err)?;
        self.run(py, &prompt, opts)
    }

    /// One answer per prompt, in order, each generated as `generate(prompt, **kwargs)` would.
    #[pyo3(signature = (prompts, **kwargs))]
    fn generate_batch(&self, py: Python<'_>, prompts: Vec<String>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
        let opts = GenOptions::from_kwargs("generate_batch", kwargs, false)?;
        let mut answers = Vec::with_capacity(prompts.len());
        for prompt in &prompts {
            let ids = self.encode(py, prompt)?;
            let stream = Stream::spawn(self.engine.clone(), ids, opts.params.clone());
            answers.push(collect(py, stream)?.0);
        }
        Ok(answers)
    }

    /// Token ids of `text`. With `add_bos`, a BOS token is prepended when the model asks for one
    /// (as `generate` does); without, never.
    #[pyo3(signature = (text, add_bos=true))]
    fn tokenize(&self, py: Python<'_>, text: &str, add_bos: bool) -> PyResult<Vec<u32>> {
        let e = &self.engine;
        let ids = py.detach(|| if add_bos { e.encode_prompt(text) } else { e.tokenizer.encode(text, false) });
        ids.map_err(engine_err)
    }

    /// The text of token ids (special tokens included).
    fn detokenize(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = token_ids(ids)?;
        py.detach(|| self.engine.tokenizer.decode(&ids)).map_err(engine_err)
    }

    /// Perplexity of `text` the way the reference figures are measured: windows of `ctx`
    /// tokens (default 512), each from an empty cache, every prediction scored; at most `windows`
    /// windows (default: all that fit).
    /// Returns {"ppl", "top1", "nll", "tokens", "windows", "sparsity"} (the share of FFN
    /// neurons skipped; 0 when dense). Ctrl-C interrupts it.
    #[pyo3(signature = (text, *, ctx=None, windows=None))]
    fn perplexity<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        ctx: Option<&Bound<'py, PyAny>>,
        windows: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let params = PerplexityParams {
            ctx: ctx.map(|c| whole(c, "ctx")).transpose()?.unwrap_or(512),
            windows: windows.map(|w| whole(w, "windows")).transpose()?,
            ..PerplexityParams::default()
        };
        let r = score(py, &self.engine, text, &params)?;
        let d = PyDict::new(py);
        d.set_item("ppl", r.ppl)?;
        d.set_item("top1", r.top1)?;
        d.set_item("nll", r.nll)?;
        d.set_item("tokens", r.tokens)?;
        d.set_item("windows", r.windows)?;
        d.set_item("sparsity", r.sparsity.sparsity())?;
        Ok(d)
    }

    /// The FFN sparsity setting in use ("ffn_magnitude at 30% (path)"), or None when dense.
    #[getter]
    fn sparsity(&self) -> Option<String> {
        self.engine.model.sparsity().map(|s| s.describe())
    }

    /// "cpu", or the GPU's name and what the placement put there.
    #[getter]
    fn device(&self) -> String {
        self.engine.device()
    }

    /// Bytes the GPU backend holds now (weights, scratch, KV caches); 0 on the CPU.
    #[getter]
    fn gpu_bytes(&self) -> usize {
        self.engine.gpu_bytes()
    }

    /// What opening the model decided that a user should hear (the device in use, or why the
    /// model stays on the CPU), also printed on stderr.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.engine.notes.clone()
    }

    /// The file or folder the model was opened from.
    #[getter]
    fn path(&self) -> PyResult<String> {
        Ok(self.engine.path.display().to_string())
    }

    /// Context length in tokens (prompt and answer together).
    #[getter]
    fn ctx(&self) -> usize {
        self.engine.ctx()
    }

    /// Tokens in the vocabulary (ids are 0 … n_vocab-1).
    #[getter]
    fn n_vocab(&self) -> usize {
        self.engine.tokenizer.vocab_size()
    }

    /// Compute threads the forward pass uses.
    #[getter]
    fn threads(&self) -> usize {
        self.engine.threads()
    }

    /// The chat template's Jinja source, or `None` when the model has none.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.engine.chat_template.as_ref().map(|t| t.source().to_string())
    }

    /// The model's hyper-parameters, as read from the file.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.engine.config();
        let d = PyDict::new(py);
        d.set_item("arch", c.arch.name())?;
        d.set_item("name", &c.name)?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("hidden", c.dim)?;
        d.set_item("ffn_hidden", c.ffn_dim)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_kv_heads", c.n_kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("train_ctx", c.train_ctx)?;
        d.set_item("rope_theta", shortest_f64(c.rope_theta))?;
        d.set_item("rms_eps", shortest_f64(c.rms_eps))?;
        d.set_item("activation", format!("{:?}", c.activation).to_lowercase())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let c = self.engine.config();
        format!("ember.Model({:?}, arch={}, n_layers={}, ctx={})", self.engine.path.display().to_string(), c.arch.name(), c.n_layers, self.engine.ctx())
    }
}

impl Model {
    fn encode(&self, py: Python<'_>, prompt: &str) -> PyResult<Vec<u32>> {
        py.detach(|| self.engine.encode_prompt(prompt)).map_err(engine_err)
    }

    /// Starts a generation after `prompt`; its text, or a `TextStream` of its pieces.
    fn run(&self, py: Python<'_>, prompt: &str, opts: GenOptions) -> PyResult<Py<PyAny>> {
        let ids = self.encode(py, prompt)?;
        let stream = Stream::spawn(self.engine.clone(), ids, opts.params);
        if opts.stream {
            TextStream::new(stream).into_py_any(py)
        } else {
            collect(py, stream)?.0.into_py_any(py)
        }
    }
}

/// The f64 that prints like the f32 does (1e-5, not 9.999999747378752e-06).
fn shortest_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Unwinds the perplexity thread out of the engine (`resume_unwind` prints nothing).
struct Cancelled;

/// Runs the perplexity on its own thread while the caller waits with the GIL released, checking
/// for signals every [`SLICE`]. On Ctrl-C the caller gets KeyboardInterrupt at once; the thread
/// stops at the end of its current window (the engine's progress callback unwinds out of it).
fn score(py: Python<'_>, engine: &Arc<Engine>, text: &str, params: &PerplexityParams) -> PyResult<eval::PerplexityResult> {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let (engine, text, params, flag) = (engine.clone(), text.to_owned(), params.clone(), cancel.clone());
    thread::Builder::new()
        .name("ember-perplexity".into())
        .spawn(move || {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                eval::perplexity(&engine, &text, &params, &mut |_, _| {
                    if flag.load(Ordering::Relaxed) {
                        panic::resume_unwind(Box::new(Cancelled));
                    }
                })
            }));
            let _ = tx.send(outcome); // the caller may be gone (interrupted)
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a perplexity thread: {e}")))?;
    let mut rx = rx;
    loop {
        let rx = &mut rx; // a `Receiver` is `Send` but not `Sync`: lend it, don't share it
        match py.detach(move || rx.recv_timeout(SLICE)) {
            Ok(Ok(result)) => return result.map_err(engine_err),
            Ok(Err(payload)) => panic::resume_unwind(payload), // a bug in the engine: PanicException
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    cancel.store(true, Ordering::Relaxed);
                    return Err(interrupt);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("the perplexity thread ended without a result"))
            }
        }
    }
}

/// `messages`: a list (or other sequence) of dicts with str "role" and "content".
fn read_messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<Message>> {
    if messages.is_instance_of::<PyString>() || messages.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!("`messages` must be a list of dicts, got {}", type_name(messages))));
    }
    let items: Vec<Bound<'_, PyAny>> = messages
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("`messages` must be a list of dicts, got {}", type_name(messages))))?
        .collect::<PyResult<_>>()?;
    if items.is_empty() {
        return Err(PyValueError::new_err("`messages` is empty"));
    }
    items.iter().enumerate().map(|(i, m)| read_message(i, m)).collect()
}

fn read_message(i: usize, m: &Bound<'_, PyAny>) -> PyResult<Message> {
    let m = m
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err(format!("messages[{i}] must be a dict with \"role\" and \"content\", got {}", type_name(m))))?;
    let field = |key: &str| -> PyResult<String> {
        let v = m.get_item(key)?.ok_or_else(|| PyValueError::new_err(format!("messages[{i}] has no \"{key}\"")))?;
        v.extract::<String>()
            .map_err(|_| PyTypeError::new_err(format!("messages[{i}][\"{key}\"] must be a str, got {}", type_name(&v))))
    };
    Ok(Message::new(field("role")?, field("content")?))
}

/// `ids`: a list (or other iterable) of non-negative ints.
fn token_ids(ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if ids.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("`ids` must be a list of int, got str"));
    }
    let iter = ids.try_iter().map_err(|_| PyTypeError::new_err(format!("`ids` must be a list of int, got {}", type_name(ids))))?;
    iter.enumerate().map(|(i, id)| whole(&id?, &format!("ids[{i}]"))).collect()
}
