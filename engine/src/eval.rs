//! Perplexity and top-1 next-token accuracy, measured the way the reference figures in
//! `shared/reference/*/ppl.json` were: the text is tokenized once without BOS and cut into
//! consecutive windows of `ctx` tokens (BOS + ctx−1 tokens when the model adds BOS); each window
//! runs from an empty cache; every next-token prediction inside it is scored; perplexity is
//! exp(mean NLL) pooled over all windows.

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::model::Logits;

#[derive(Clone, Debug)]
pub struct PerplexityParams {
    pub ctx: usize,
    /// At most this many windows (all that fit when `None`).
    pub windows: Option<usize>,
    /// Positions run per forward call inside a window (bounds the logits buffer).
    pub chunk: usize,
}

impl Default for PerplexityParams {
    fn default() -> Self {
        PerplexityParams { ctx: 512, windows: None, chunk: 128 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    pub top1: f64,
    /// Predictions scored.
    pub tokens: usize,
    pub windows: usize,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// FFN neurons kept while scoring (all of them when dense).
    pub sparsity: crate::sparsity::SparsityStats,
}

/// Scores `text`; `progress(done, total)` is called after each window.
pub fn perplexity(engine: &Engine, text: &str, params: &PerplexityParams, progress: &mut dyn FnMut(usize, usize)) -> Result<PerplexityResult> {
    let ids = engine.tokenizer.encode(text, false)?;
    perplexity_of_tokens(engine, &ids, params, progress)
}

pub fn perplexity_of_tokens(
    engine: &Engine,
    ids: &[u32],
    params: &PerplexityParams,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityResult> {
    let bos = if engine.tokenizer.add_bos { engine.tokenizer.bos } else { None };
    let body = params.ctx - usize::from(bos.is_some());
    if params.ctx < 2 || body == 0 || params.chunk == 0 {
        return Err(EngineError::Param { name: "ctx", problem: format!("{} is too small to score anything", params.ctx) });
    }
    if params.ctx > engine.ctx() {
        return Err(EngineError::ContextOverflow { prompt: params.ctx, ctx: engine.ctx() });
    }
    let available = ids.len() / body;
    let n_windows = params.windows.map_or(available, |w| w.min(available));
    if n_windows == 0 {
        return Err(EngineError::Param {
            name: "file",
            problem: format!("{} tokens do not fill one window of {}", ids.len(), params.ctx),
        });
    }
    let mut cache = engine.model.new_cache(params.ctx);
    let (mut nll, mut correct, mut scored) = (0.0f64, 0usize, 0usize);
    let vocab = engine.config().vocab_size;
    for w in 0..n_windows {
        let mut window: Vec<u32> = bos.into_iter().collect();
        window.extend_from_slice(&ids[w * body..(w + 1) * body]);
        cache.clear();
        for start in (0..window.len()).step_by(params.chunk) {
            let chunk = &window[start..(start + params.chunk).min(window.len())];
            let logits = engine.forward(chunk, &mut cache, Logits::All)?;
            for (i, row) in logits.chunks(vocab).enumerate() {
                let Some(&target) = window.get(start + i + 1) else { break };
                let (lp, top) = log_prob_and_argmax(row, target as usize);
                nll -= lp;
                correct += usize::from(top == target as usize);
                scored += 1;
            }
        }
        progress(w + 1, n_windows);
    }
    let mean = nll / scored as f64;
    Ok(PerplexityResult {
        ppl: mean.exp(),
        top1: correct as f64 / scored as f64,
        tokens: scored,
        windows: n_windows,
        nll: mean,
        sparsity: cache.take_sparsity_stats(),
    })
}

/// log softmax(row)[target] in f64, and the arg-max.
fn log_prob_and_argmax(row: &[f32], target: usize) -> (f64, usize) {
    let (mut top, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > max {
            max = v;
            top = i;
        }
    }
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    ((row[target] - max) as f64 - sum.ln(), top)
}
