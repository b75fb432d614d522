//! Opening a model: a GGUF file or a Hugging Face folder becomes a config, a weight store, a
//! tokenizer and (when the model has one) a chat template.

use std::path::{Path, PathBuf};

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::{Weight, WeightStore};

/// Everything read from a model's files, before any compute structure is built.
pub struct ModelFiles {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// The GGUF header, for GGUF models (metadata shown by `ember info`).
    pub gguf: Option<GgufFile>,
}

pub fn open(path: &Path) -> Result<ModelFiles> {
    if path.is_dir() {
        open_hf_folder(path)
    } else if path.exists() {
        open_gguf(path)
    } else {
        Err(EngineError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or folder")))
    }
}

fn open_gguf(path: &Path) -> Result<ModelFiles> {
    let g = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&g)?;
    let tensors = g
        .tensors
        .iter()
        .map(|t| {
            let w = Weight::new(t.name.clone(), t.dtype, t.shape(), g.mmap.clone(), t.offset..t.offset + t.n_bytes);
            (t.name.clone(), w)
        })
        .collect();
    let weights = WeightStore { path: path.to_path_buf(), tensors };
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let chat_template = ChatTemplate::from_gguf(&g)?;
    Ok(ModelFiles { path: path.to_path_buf(), config, weights, tokenizer, chat_template, gguf: Some(g) })
}

fn open_hf_folder(dir: &Path) -> Result<ModelFiles> {
    let (config, weights) = crate::hf::open_folder(dir)?;
    let tokenizer = Tokenizer::from_hf_folder(dir)?;
    let chat_template = ChatTemplate::from_hf_folder(dir)?;
    Ok(ModelFiles { path: dir.to_path_buf(), config, weights, tokenizer, chat_template, gguf: None })
}
