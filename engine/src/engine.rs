//! [`Engine`]: a loaded model ready to generate — the entry point for every face of Ember (CLI,
//! Python, server, embedding daemons).

use std::path::{Path, PathBuf};

use crate::chat::{ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::generate::Session;
use crate::gguf::GgufFile;
use crate::loader;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Options fixed when a model is opened.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Context length in tokens; `None` uses the length the model was trained with.
    pub ctx: Option<usize>,
    /// Compute threads for this engine's forward passes; `None` shares the process-wide pool
    /// (one thread per core). Each engine with `Some` owns its pool, so several engines in one
    /// daemon do not fight over the same threads.
    pub threads: Option<usize>,
    /// FFN activation sparsity: the profile and the setting (dense when no profile is given
    /// or found beside the model).
    pub sparsity: crate::sparsity::SparsityOptions,
    /// The GPU to offload to (`auto`: the first real GPU found, else the CPU only).
    pub gpu: ember_kernels::backend::DeviceSpec,
    /// Bytes of device memory the placement may use; `None`: what the device reports free
    /// (or, when it cannot tell, the whole model).
    pub vram: Option<u64>,
    /// How the placement splits the model between the GPU and the CPU.
    pub offload: crate::placement::Offload,
}

/// A loaded model: weights (memory-mapped), tokenizer, chat template. `Engine` is `Send + Sync`;
/// share it with `Arc` and give each concurrent conversation its own [`Session`].
pub struct Engine {
    /// The model file or folder it was opened from.
    pub path: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// The GGUF header, for GGUF models.
    pub gguf: Option<GgufFile>,
    /// Bytes of every tensor in the file, by tensor kind (for `ember info`).
    pub tensor_bytes: Vec<(String, usize)>,
    ctx: usize,
    pool: Option<rayon::ThreadPool>,
    /// What opening decided that a user should hear: the device in use, or why the model stays
    /// on the CPU (the CLI prints these on stderr).
    pub notes: Vec<String>,
}

impl Engine {
    /// Opens a GGUF file or a Hugging Face folder; every problem with the file is an error that
    /// names the file and the field.
    pub fn open(path: &Path, options: &EngineOptions) -> Result<Engine> {
        let files = loader::open(path)?;
        let mut model = Model::load(&files.config, &files.weights)?;
        let mut profile = None;
        if let Some((p, profile_path, criterion, sparsity)) = crate::sparsity::resolve(&files.path, &files.config, &options.sparsity)? {
            model.sparse = Some(crate::sparsity::build(&p, profile_path, criterion, sparsity, &model.ffn_mats())?);
            profile = Some(p);
        }
        if files.tokenizer.vocab_size() > files.config.vocab_size {
            return Err(EngineError::Config {
                path: path.to_path_buf(),
                field: "vocab_size".into(),
                problem: format!(
                    "the tokenizer has {} tokens but the embedding only {} rows",
                    files.tokenizer.vocab_size(),
                    files.config.vocab_size
                ),
            });
        }
        let ctx = match options.ctx {
            Some(0) => return Err(EngineError::Param { name: "ctx", problem: "must be at least 1".into() }),
            Some(c) => c,
            None => files.config.train_ctx,
        };
        let pool = match options.threads {
            None => None,
            Some(0) => return Err(EngineError::Param { name: "threads", problem: "must be at least 1".into() }),
            Some(n) => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| EngineError::Param {
                name: "threads",
                problem: format!("cannot start {n} threads: {e}"),
            })?),
        };
        let mut notes = Vec::new();
        if options.gpu != ember_kernels::backend::DeviceSpec::None {
            let profile = profile.or_else(|| profile_beside(&files.path, &files.config, &mut notes));
            let req = crate::model::GpuRequest {
                spec: options.gpu,
                vram: options.vram,
                offload: options.offload,
                ctx,
                frequency: profile.as_ref().map(|p| p.frequency.as_slice()),
            };
            model.gpu = crate::model::attach_gpu(&model, &req, &mut notes)?;
        }
        let tensor_bytes = bytes_by_kind(&files.weights);
        Ok(Engine {
            path: files.path,
            model,
            tokenizer: files.tokenizer,
            chat_template: files.chat_template,
            gguf: files.gguf,
            tensor_bytes,
            ctx,
            pool,
            notes,
        })
    }

    /// Runs `f` (a forward pass) on this engine's threads: the calling thread hands `f` to the
    /// pool once and waits, and the parallel regions inside `f` are forked and joined by pool
    /// workers, which is cheap (a worker spins briefly between regions), instead of each region
    /// waking the pool from outside and sleeping on a lock (two context switches per matrix).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            // A scope runs its body inside the global pool (inline when already on a worker).
            None => rayon::scope(|_| f()),
        }
    }

    /// One forward pass on this engine's threads (see [`Model::forward`]).
    pub fn forward<'c>(&self, tokens: &[u32], cache: &'c mut crate::kv_cache::KvCache, want: crate::model::Logits) -> Result<&'c [f32]> {
        self.install(move || self.model.forward(tokens, cache, want))
    }

    /// Switches the FFN sparsity setting (`Criterion::Dense` or sparsity 0 turns it off); the
    /// profile must be this model's.
    pub fn set_sparsity(&mut self, profile: &crate::sparsity::Profile, profile_path: &Path, criterion: crate::sparsity::Criterion, sparsity: f32) -> Result<()> {
        use crate::sparsity::Criterion;
        profile
            .check_model(profile_path, &crate::sparsity::model_shape(&self.path, &self.model.config))
            .map_err(|e| EngineError::Param { name: "profile", problem: e.to_string() })?;
        if criterion == Criterion::Dense || (sparsity <= 0.0 && criterion != Criterion::Predictor) {
            self.model.sparse = None;
            return Ok(());
        }
        let mats = self.model.ffn_mats();
        let built = self.install(|| crate::sparsity::build(profile, profile_path.to_path_buf(), criterion, sparsity, &mats))?;
        self.model.sparse = Some(built);
        Ok(())
    }

    /// Compute threads the forward pass uses.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// The context length sessions get.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// A new sequence with its own KV cache.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    /// The prompt text for a conversation: the chat template rendered with the generation
    /// prompt, or (for models without a template) the messages' contents joined by newlines.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true),
            None => Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")),
        }
    }

    /// Token ids of a prompt: BOS added when the model's metadata asks for it and the text does
    /// not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let with_bos = self.tokenizer.add_bos;
        let mut ids = self.tokenizer.encode(text, false)?;
        if with_bos {
            if let Some(bos) = self.tokenizer.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }
}

/// The sparsity profile beside the model, for the placement's neuron frequencies; a profile that
/// does not load or is another model's is left out with a note.
fn profile_beside(model_path: &Path, config: &ModelConfig, notes: &mut Vec<String>) -> Option<crate::sparsity::Profile> {
    let path = crate::sparsity::Profile::beside(model_path);
    if !path.is_file() {
        return None;
    }
    let checked = crate::sparsity::Profile::load(&path)
        .and_then(|p| p.check_model(&path, &crate::sparsity::model_shape(model_path, config)).map(|()| p));
    match checked {
        Ok(p) => Some(p),
        Err(e) => {
            notes.push(format!("placement: not using {} ({e})", path.display()));
            None
        }
    }
}

/// Whether the GPU runs part of the model, and which.
impl Engine {
    /// `"cpu"`, or the GPU's name and what the placement put there.
    pub fn device(&self) -> String {
        match &self.model.gpu {
            Some(g) => format!("{} ({})", g.backend.name(), g.placement.summary()),
            None => "cpu".into(),
        }
    }

    /// The placement in use, when a GPU runs part of the model.
    pub fn placement(&self) -> Option<&crate::placement::Placement> {
        self.model.gpu.as_ref().map(|g| &g.placement)
    }

    /// Device bytes held now (weights, scratch, the KV caches of live sessions).
    pub fn gpu_bytes(&self) -> usize {
        self.model.gpu.as_ref().map_or(0, |g| g.backend.allocated_bytes())
    }
}

fn bytes_by_kind(w: &crate::weights::WeightStore) -> Vec<(String, usize)> {
    let mut map = std::collections::BTreeMap::<String, usize>::new();
    for (name, t) in &w.tensors {
        let kind = name.strip_prefix("blk.").and_then(|s| s.split_once('.')).map(|(_, k)| k).unwrap_or(name);
        let kind = kind.trim_end_matches(".weight").trim_end_matches(".bias");
        *map.entry(format!("{kind} ({})", t.dtype)).or_default() += t.n_bytes();
    }
    map.into_iter().collect()
}

#[cfg(test)]
mod tests {
    /// Faces share one engine between threads.
    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Engine>();
    }
}
