"""Shared fixtures: the default test model (SmolLM2-135M-Instruct Q4_1, $EMBER_TEST_MODEL) and
the reference figures (../shared/reference: Hugging Face transformers in float32 on weights
dequantized exactly from the same GGUF; see its README)."""

import json
import os
from pathlib import Path

import pytest

import ember

REPO = Path(__file__).resolve().parents[3]


def shared_dir(var: str, name: str) -> Path:
    """$var, else /work/shared/<name>, else <repo>/../shared/<name> (where CI puts it)."""
    if os.environ.get(var):
        return Path(os.environ[var])
    for candidate in (Path("/work/shared") / name, REPO.parent / "shared" / name):
        if candidate.is_dir():
            return candidate
    pytest.fail(f"{name} folder not found (looked in /work/shared and {REPO.parent / 'shared'}); set {var}")


@pytest.fixture(scope="session")
def model_path() -> str:
    path = os.environ.get("EMBER_TEST_MODEL") or str(
        Path(os.environ.get("EMBER_HOME") or Path.home() / ".cache/ember") / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    if not os.path.isfile(path):
        pytest.fail(f"test model not found at {path} (set EMBER_TEST_MODEL; `make model` fetches it)")
    return path


@pytest.fixture(scope="session")
def model(model_path: str) -> ember.Model:
    # A 2048-token context keeps each generation's KV cache small; the model's own is 8192.
    return ember.Model(model_path, ctx=2048)


@pytest.fixture(scope="session")
def greedy_reference() -> dict:
    return json.loads((shared_dir("EMBER_REFERENCE_DIR", "reference") / "smollm2-135m/greedy.json").read_text())


@pytest.fixture(scope="session")
def ppl_reference() -> dict:
    return json.loads((shared_dir("EMBER_REFERENCE_DIR", "reference") / "smollm2-135m/ppl.json").read_text())


@pytest.fixture(scope="session")
def wikitext() -> str:
    return (shared_dir("EMBER_DATA_DIR", "data") / "wikitext-2-tokens-test.txt").read_text(encoding="utf-8")
