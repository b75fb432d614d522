"""Bad input: missing or broken model files, over-long prompts, unsupported options, bad
arguments. Each error is a Python exception whose message names what is wrong."""

import pytest

import ember


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(ember.ModelNotFoundError) as err:
        ember.Model(str(missing))
    assert str(missing) in str(err.value)
    assert isinstance(err.value, ember.EmberError) and isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        ember.Model(missing)  # os.PathLike works too


def test_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a GGUF file\n" * 10)
    with pytest.raises(ember.EmberError) as err:
        ember.Model(str(bad))
    assert str(bad) in str(err.value)
    assert not isinstance(err.value, FileNotFoundError)


def test_prompt_longer_than_the_context(model_path):
    small = ember.Model(model_path, ctx=64)
    assert small.ctx == 64
    prompt = "word " * 200
    with pytest.raises(ember.EmberError, match="context"):
        small.generate(prompt, max_tokens=4)
    with pytest.raises(ember.EmberError, match="context"):
        list(small.generate(prompt, max_tokens=4, stream=True))
    with pytest.raises(ember.EmberError, match="context"):
        small.perplexity("word " * 1000, ctx=512)
    assert small.generate("Hello", temperature=0, max_tokens=4)  # still usable


def test_sparsity_settings_that_cannot_run_are_errors(model_path, tmp_path):
    # No profile given and none beside the model: a sparsity cannot be calibrated.
    with pytest.raises(ValueError, match="ember profile"):
        ember.Model(model_path, sparsity=0.5, ctx=128)
    missing = tmp_path / "missing.profile.safetensors"
    with pytest.raises(ValueError, match="missing.profile.safetensors"):
        ember.Model(model_path, profile=missing, ctx=128)
    not_a_profile = tmp_path / "bad.profile.safetensors"
    not_a_profile.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="bad.profile.safetensors"):
        ember.Model(model_path, profile=not_a_profile, ctx=128)
    dense = ember.Model(model_path, sparsity=0.0, ctx=128)
    assert dense.sparsity is None
    assert dense.perplexity("The quick brown fox jumps over the lazy dog. " * 20, ctx=64, windows=1)["sparsity"] == 0.0


def test_cpu_choices_open_the_model(model_path):
    for gpu in ("auto", "cpu", "none"):
        assert ember.Model(model_path, gpu=gpu, ctx=128, threads=1).threads == 1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(gpu="tpu"), ValueError, "gpu"),
        (dict(ctx=0), ValueError, "ctx"),
        (dict(ctx=-5), ValueError, "ctx"),
        (dict(threads=0), ValueError, "threads"),
        (dict(threads="two"), TypeError, "threads"),
    ],
)
def test_bad_model_options(model_path, kwargs, error, words):
    with pytest.raises(error, match=words):
        ember.Model(model_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(max_tokens=-1), ValueError, "max_tokens"),
        (dict(max_tokens=2.5), TypeError, "max_tokens"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(top_p=2.0), ValueError, "top_p"),
        (dict(min_p=1.0), ValueError, "min_p"),
        (dict(top_k=-3), ValueError, "top_k"),
        (dict(repeat_penalty=0.0), ValueError, "repeat_penalty"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed="x"), TypeError, "seed"),
        (dict(stop=""), ValueError, "stop"),
        (dict(stop=[1, 2]), TypeError, "stop"),
        (dict(stream="yes"), TypeError, "stream"),
        (dict(max_token=5), TypeError, "max_token"),
    ],
)
def test_bad_generation_arguments(model, kwargs, error, words):
    with pytest.raises(error, match=words):
        model.generate("Hello", **kwargs)


def test_bad_chat_messages(model):
    with pytest.raises(TypeError, match="messages"):
        model.chat("Hello")
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        model.chat(["Hello"])
    with pytest.raises(ValueError, match=r"messages\[1\] has no \"content\""):
        model.chat([{"role": "user", "content": "Hi"}, {"role": "user"}])
    with pytest.raises(TypeError, match=r"messages\[0\]\[\"role\"\]"):
        model.chat([{"role": 1, "content": "Hi"}])
    with pytest.raises(ValueError, match="empty"):
        model.chat([])


def test_bad_batch_and_token_arguments(model):
    with pytest.raises(TypeError):
        model.generate_batch("one prompt")
    with pytest.raises(TypeError, match="stream"):
        model.generate_batch(["a"], stream=True)
    with pytest.raises(ValueError, match=r"ids\[1\]"):
        model.detokenize([1, -1])
    with pytest.raises(ember.EmberError, match="999999"):
        model.detokenize([999999])
    with pytest.raises(TypeError):
        model.detokenize("abc")
    with pytest.raises(ValueError, match="ctx"):
        model.perplexity("some text", ctx=1)
    with pytest.raises(ValueError):
        model.perplexity("too short", ctx=512)
