//! Pre-tokenizer regexes of byte-level BPE vocabularies, keyed by GGUF `tokenizer.ggml.pre`,
//! following llama.cpp `src/llama-vocab.cpp` (`llama_vocab::impl::load`, the pre-type table, and
//! `llm_tokenizer_bpe`'s constructor, the regexes of each type).
//!
//! Each type is a list of regexes applied in turn: every regex splits the pieces the previous one
//! left, keeping both the matches and the text between them (Hugging Face `Split` with
//! `behavior = Isolated`). Where llama.cpp rewrote a regex for its own engine (case-insensitive
//! groups expanded, `\p{Lu}` classes emulated with look-aheads) we use the original regex from the
//! model's `tokenizer.json`, which Oniguruma runs as written.

/// What the GGUF `tokenizer.ggml.pre` value selects.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreTokenizer {
    /// The llama.cpp type name, for messages.
    pub kind: &'static str,
    pub regexes: &'static [&'static str],
    /// BPE `ignore_merges`: a word that is itself a token is not split (llama3, tekken).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` of this type (the GGUF key overrides it).
    pub add_bos: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

const fn pre(kind: &'static str, regexes: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer { kind, regexes, ignore_merges: false, add_bos: false }
}

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT`, used when the file names no pre-tokenizer.
pub(crate) fn default_pre() -> PreTokenizer {
    pre("default", &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` name; `None` when Ember does not know it.
pub(crate) fn lookup(name: &str) -> Option<PreTokenizer> {
    let p = match name {
        "default" => default_pre(),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => {
            PreTokenizer { ignore_merges: true, add_bos: true, ..pre("llama3", &[LLAMA3]) }
        }
        "dbrx" | "smaug-bpe" => pre("dbrx", &[LLAMA3]),
        "glm4" | "chatglm-bpe" => pre("chatglm4", &[LLAMA3]),
        "deepseek-coder" => {
            pre("deepseek-coder", &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"])
        }
        "deepseek-v3" => pre(
            "deepseek-v3",
            &[
                r"\p{N}{1,3}",
                r"[一-龥぀-ゟ゠-ヿ]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
            ],
        ),
        "falcon" => pre("falcon", &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            pre("starcoder", &[r"\p{N}", GPT2])
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de"
        | "jina-v2-code" | "roberta-bpe" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
        | "jais" => pre("gpt2", &[GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "kormo" | "stablelm2" => pre("qwen2", &[QWEN2]),
        "poro-chat" | "bloom" | "gpt3-finnish" => pre("bloom", &[BLOOM]),
        "viking" => pre("viking", &[BLOOM, r"\p{N}"]),
        "tekken" => PreTokenizer { ignore_merges: true, add_bos: true, ..pre("tekken", &[TEKKEN]) },
        "gpt-4o" | "llama4" => pre("gpt-4o", &[GPT4O]),
        _ => return None,
    };
    Some(p)
}

/// The names [`lookup`] accepts, for error messages.
pub(crate) const KNOWN: &str = "default, llama3/llama-bpe, qwen2, smollm, starcoder, gpt-2, dbrx, \
chatglm-bpe, deepseek-coder, deepseek-v3, falcon, command-r, stablelm2, olmo, mpt, bloom, viking, tekken, gpt-4o";
