//! Sampling: logits → next token. (Owner: sampling work in progress — API below is the contract.)

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Arg-max (what `--temperature 0` means).
    Greedy,
    /// Softmax at `temperature`, restricted by top-k (0 = off), top-p (1.0 = off) and min-p (0.0 = off).
    Sample { temperature: f32, top_k: usize, top_p: f32, min_p: f32 },
}

/// Penalties on tokens already present in the last `last_n` tokens of the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Penalties {
    pub repeat: f32,    // 1.0 = off; llama.cpp style: logit / p if > 0 else logit * p
    pub presence: f32,  // 0.0 = off
    pub frequency: f32, // 0.0 = off
    pub last_n: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub strategy: Strategy,
    pub penalties: Penalties,
    pub seed: u64,
}

pub struct Sampler {}

impl Sampler {
    pub fn new(_params: SamplingParams) -> crate::Result<Sampler> {
        unimplemented!()
    }

    /// The next token, given the logits of the last position and the tokens so far.
    pub fn sample(&mut self, _logits: &[f32], _history: &[u32]) -> u32 {
        unimplemented!()
    }
}
