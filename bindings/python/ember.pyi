"""Ember: run LLMs (GGUF files, Hugging Face folders) on small GPUs and plain CPUs.

    import ember
    model = ember.Model()                      # the default model, fetched on first use
    print(model.generate("The capital of France is", temperature=0, max_tokens=16))
    for piece in model.chat([{"role": "user", "content": "Hi!"}], stream=True):
        print(piece, end="", flush=True)

Every call that computes releases the GIL; Ctrl-C interrupts a generation.
"""

import os
from typing import Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Union, overload

__version__: str

class EmberError(Exception):
    """An error reported by Ember's engine (bad model file, prompt longer than the context,
    tokenizer or template failure); the message names the file, field or parameter."""

class ModelNotFoundError(EmberError, FileNotFoundError):
    """The model path names no existing file or folder (and no known model)."""

FinishReason = Literal["eos", "stop", "length", "context"]

class TextStream(Iterator[str]):
    """The pieces of one generation as they are produced (empty pieces are skipped).

    `close()`, leaving a `with` block or dropping the iterator cancels the generation.
    Errors raise `EmberError` while iterating."""

    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "TextStream": ...
    def __exit__(self, *exc: object) -> bool: ...
    @property
    def finish_reason(self) -> Optional[FinishReason]:
        """Why it ended: "eos" (end-of-turn token), "stop" (a stop string), "length"
        (max_tokens), "context" (context full); None until it has ended."""
    @property
    def prompt_tokens(self) -> Optional[int]: ...
    @property
    def completion_tokens(self) -> Optional[int]: ...

class Model:
    """A loaded model, safe to share between threads.

    path: a GGUF file, a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or a
    known model name ("smollm2-135m", "qwen2.5-coder-0.5b"); None is the default model. Known
    models are downloaded into $EMBER_HOME (default ~/.cache/ember) on first use.
    ctx: context length in tokens (default: the model's). threads: compute threads (default:
    all cores). gpu: "auto" (the first real GPU, else the CPU), "cpu"/"none", "cuda:N", "wgpu:N"
    or "host" (the CPU backend standing in for a GPU); a GPU that is missing or fails leaves the
    model on the CPU with a note (`notes`). vram: the device memory the placement may use, bytes
    or a size such as "512MiB" (default: what the device reports free, less a tenth). offload:
    "neurons" (attention and the hottest FFN neurons on the GPU, the cold ones on the CPU at
    the same time) or "layers" (whole layers). profile: a sparsity profile made by
    `ember profile` (default: "<model>.profile.safetensors" beside the model, when present);
    sparsity: the share of FFN neurons to skip, overriding the profile's default (0 = dense);
    criterion: "ffn_magnitude", "input", "gate", "predictor" or "dense", overriding the profile's.

    Raises ModelNotFoundError for a missing path, EmberError for a bad model file, ValueError
    for bad numbers."""

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]", None] = None,
        *,
        vram: Union[str, int, None] = None,
        gpu: str = "auto",
        offload: str = "neurons",
        profile: Union[str, "os.PathLike[str]", None] = None,
        sparsity: Optional[float] = None,
        criterion: Optional[str] = None,
        threads: Optional[int] = None,
        ctx: Optional[int] = None,
    ) -> None: ...
    @overload
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
        stream: Literal[False] = False,
    ) -> str: ...
    @overload
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
        stream: Literal[True],
    ) -> TextStream:
        """The text generated after `prompt`, used as it is (no chat template).

        temperature 0 is greedy (arg-max); top_k 0, top_p 1.0, min_p 0.0 and repeat_penalty 1.0
        are off. seed None picks a fresh random seed; the same seed and arguments give the same
        text. The answer ends before the first `stop` string, at the model's end-of-turn token
        (unless ignore_eos), after max_tokens tokens, or when the context is full. A prompt
        longer than the context raises EmberError. stream=True returns a TextStream of pieces."""
    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
        stream: Literal[False] = False,
    ) -> str: ...
    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
        stream: Literal[True],
    ) -> TextStream:
        """The assistant's answer to `messages` ([{"role": "user", "content": "…"}, …]),
        rendered with the model's chat template. Keywords as for `generate`."""
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
    ) -> List[str]:
        """One answer per prompt, in order, each as `generate(prompt, **kwargs)` gives it."""
    def tokenize(self, text: str, add_bos: bool = True) -> List[int]:
        """Token ids of `text`; add_bos prepends BOS when the model asks for it (as generate
        does). Special tokens written in the text (e.g. "<|im_start|>") are recognised."""
    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens included."""
    def perplexity(self, text: str, *, ctx: int = 512, windows: Optional[int] = None) -> Dict[str, float]:
        """Perplexity and top-1 accuracy of `text` over windows of `ctx` tokens, each run from an
        empty cache with every prediction scored (at most `windows` windows; default all).
        Returns {"ppl", "top1", "nll", "tokens", "windows", "sparsity"} (share of FFN neurons
        skipped; 0 when dense)."""
    @property
    def sparsity(self) -> Optional[str]:
        """The FFN sparsity setting in use, e.g. "ffn_magnitude at 30% (path)"; None when dense."""
    @property
    def device(self) -> str:
        """"cpu", or the GPU's name and what the placement put there."""
    @property
    def gpu_bytes(self) -> int:
        """Bytes the GPU backend holds now (weights, scratch, KV caches); 0 on the CPU."""
    @property
    def notes(self) -> List[str]:
        """What opening the model decided: the device in use, or why it stays on the CPU."""
    @property
    def path(self) -> str:
        """The file or folder the model was opened from."""
    @property
    def ctx(self) -> int:
        """Context length in tokens (prompt and answer together)."""
    @property
    def n_vocab(self) -> int:
        """Tokens in the vocabulary."""
    @property
    def threads(self) -> int:
        """Compute threads of the forward pass."""
    @property
    def chat_template(self) -> Optional[str]:
        """The chat template's Jinja source, or None."""
    @property
    def config(self) -> Dict[str, Union[str, int, float]]:
        """arch, name, n_layers, hidden, ffn_hidden, n_heads, n_kv_heads, head_dim, vocab_size,
        train_ctx, rope_theta, rms_eps, activation."""
