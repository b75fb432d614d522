"""GPU offload from Python: `Model(gpu=…, vram=…, offload=…)`. The "host" device (the CPU
backend standing in for a GPU) runs the placement and the hybrid executor on a machine without
a GPU, so these run everywhere: the output must still be the float32 reference's, and the
backend must stay within the budget. A GPU that is not there falls back to the CPU with a note."""

import pytest

import ember
from test_reference import expected_text, firm_steps

MIB = 1 << 20


@pytest.mark.parametrize(
    "vram, offload, budget",
    [("8MiB", "neurons", 8 * MIB), (48 * MIB, "neurons", 48 * MIB), ("48MiB", "layers", 48 * MIB)],
)
def test_host_offload_within_budget_matches_the_reference(model_path, greedy_reference, vram, offload, budget):
    m = ember.Model(model_path, gpu="host", vram=vram, offload=offload, ctx=256, threads=1)
    assert m.device != "cpu", m.notes
    assert any("used" in n for n in m.notes), m.notes
    compared = 0
    for p in greedy_reference["prompts"][:3]:
        firm = firm_steps(p)
        if firm == 0:
            continue
        got = m.generate(p["prompt_text"], temperature=0, max_tokens=firm + 2, ignore_eos=True)
        want = expected_text(m, p, firm)
        assert got.startswith(want), f"{vram} {offload}: {got!r} does not start with {want!r}"
        compared += firm
        assert 0 < m.gpu_bytes <= budget, f"{m.gpu_bytes} bytes on the device, budget {budget}"
    assert compared >= 5


def test_missing_gpu_falls_back_to_the_cpu_with_a_note(model_path):
    for gpu in ("cuda:7", "wgpu:9"):
        m = ember.Model(model_path, gpu=gpu, ctx=128, threads=1)
        if m.device == "cpu":
            assert any(gpu in n and "CPU" in n for n in m.notes), m.notes
            assert m.gpu_bytes == 0
        assert m.generate("The capital of France is", temperature=0, max_tokens=3)


def test_budget_too_small_for_anything_runs_on_the_cpu(model_path):
    m = ember.Model(model_path, gpu="host", vram=1024, ctx=128, threads=1)
    assert m.device == "cpu"
    assert any("nothing fits" in n for n in m.notes), m.notes
    assert m.generate("Hello", temperature=0, max_tokens=2)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(vram="lots"), ValueError, "vram"),
        (dict(vram="-1GiB"), ValueError, "vram"),
        (dict(vram=-5), ValueError, "vram"),
        (dict(vram=1.5), TypeError, "vram"),
        (dict(gpu="cuda:x"), ValueError, "gpu"),
        (dict(offload="rows"), ValueError, "offload"),
        (dict(criterion="magic"), ValueError, "criterion"),
    ],
)
def test_bad_device_options_are_errors(model_path, kwargs, error, words):
    with pytest.raises(error) as err:
        ember.Model(model_path, ctx=128, **{"gpu": "host", **kwargs})
    assert words in str(err.value)
