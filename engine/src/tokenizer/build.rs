//! Builds a Hugging Face `tokenizers::Tokenizer` from a GGUF vocabulary, so that GGUF files and
//! `tokenizer.json` folders share one engine. Follows transformers' GGUF loader
//! (`integrations/ggml.py`: `GGUFGPTConverter`, `GGUFLlamaConverter`) for the pipeline shapes,
//! and llama.cpp `src/llama-vocab.cpp` for the pre-tokenizer regexes and which tokens are
//! matched verbatim in the text (`cache_special_tokens`: control, user-defined and unknown).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer as HfTokenizer,
};

use super::gguf_vocab::{GgufVocab, TokenType};
use super::pretok::PreTokenizer;
use crate::error::{EngineError, Result};

/// SentencePiece's word-boundary mark, which stands for a space in `llama` vocabularies.
const SPM_SPACE: &str = "\u{2581}";

fn err(v: &GgufVocab, what: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(format!("{}: {what}", v.path.display()))
}

fn vocab_map(v: &GgufVocab) -> Vocab {
    // Later duplicates win, as in llama.cpp's `token_to_id`.
    v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
}

/// `gpt2` vocabularies: byte-level BPE over llama.cpp's pre-tokenizer regexes.
pub(crate) fn byte_level_bpe(v: &mut GgufVocab, pre: &PreTokenizer) -> Result<HfTokenizer> {
    let merges = std::mem::take(&mut v.merges);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(v), merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| err(v, format_args!("building the BPE model: {e}")))?;
    let mut steps = Vec::with_capacity(pre.regexes.len() + 1);
    for re in pre.regexes {
        let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| err(v, format_args!("pre-tokenizer `{}`: regex {re:?}: {e}", pre.kind)))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    let mut tok = HfTokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(PreSequence::new(steps)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    add_verbatim_tokens(&mut tok, v);
    Ok(tok)
}

/// `llama` vocabularies: SentencePiece as a BPE whose merges are derived from the piece scores
/// (transformers' `SentencePieceExtractor`), with `<0xNN>` byte fallback; a space becomes `▁`,
/// and one `▁` is prepended to each run of text when `add_space_prefix` (llama.cpp's default).
pub(crate) fn sentencepiece(v: &GgufVocab) -> Result<HfTokenizer> {
    let add_space_prefix = v.add_space_prefix.unwrap_or(true);
    let mut builder = BPE::builder().vocab_and_merges(vocab_map(v), spm_merges(v)).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = v.unk {
        builder = builder.unk_token(v.tokens[unk as usize].clone());
    }
    let bpe = builder.build().map_err(|e| err(v, format_args!("building the SentencePiece model: {e}")))?;
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| err(v, format_args!("replace {from:?} → {to:?}: {e}")))
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new(SPM_SPACE.to_string()).into());
    }
    norm.push(replace(" ", SPM_SPACE)?.into());
    let mut dec: Vec<DecoderWrapper> =
        vec![replace(SPM_SPACE, " ")?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    let mut tok = HfTokenizer::new(bpe);
    tok.with_normalizer(Some(NormalizerSequence::new(norm)));
    tok.with_decoder(Some(DecoderSequence::new(dec)));
    add_verbatim_tokens(&mut tok, v);
    Ok(tok)
}

/// Merges implied by SentencePiece scores: every normal piece that splits into two pieces of
/// the vocabulary gives a merge, ranked by the piece's score (highest first); ties keep
/// vocabulary order, then the ids of the two halves (as transformers' extractor does).
fn spm_merges(v: &GgufVocab) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = v.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let is_piece = |i: usize| matches!(v.types[i], TokenType::Normal | TokenType::Undefined | TokenType::UserDefined);
    let mut merges: Vec<(f32, usize, usize)> = Vec::new();
    for (id, piece) in v.tokens.iter().enumerate() {
        if !matches!(v.types[id], TokenType::Normal | TokenType::Undefined) {
            continue;
        }
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let l = *ids.get(&piece[..at])?;
                let r = *ids.get(&piece[at..])?;
                (is_piece(l) && is_piece(r)).then_some((l, r))
            })
            .collect();
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r)| (v.scores[id], l, r)));
    }
    // Stable: equal scores keep the order above.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|(_, l, r)| (v.tokens[l].clone(), v.tokens[r].clone())).collect()
}

/// Control, unknown and user-defined tokens are matched verbatim in the text, before any
/// normalisation or pre-tokenization (llama.cpp `tokenizer_st_partition`, parse_special=true).
fn add_verbatim_tokens(tok: &mut HfTokenizer, v: &GgufVocab) {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (t, ty) in v.tokens.iter().zip(&v.types) {
        match ty {
            TokenType::Control | TokenType::Unknown => {
                special.push(AddedToken::from(t.clone(), true).normalized(false))
            }
            TokenType::UserDefined => plain.push(AddedToken::from(t.clone(), false).normalized(false)),
            _ => {}
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&plain);
}
