"""`ember serve` driven by the official `openai` Python package, as a user drives it.

Starts `target/release/ember serve --port 0 --api-key test` on loopback with the default test
model ($EMBER_TEST_MODEL), then checks chat and text completions with and without streaming
(the joined stream equals the plain answer at temperature 0), usage counts, stop strings, a wrong
key, an over-long prompt, a client that leaves mid-stream, and a bounded load test: 8 clients x
10 requests, each client with its own prompt, every answer equal to what that prompt gets alone.

Run by `make test-server`; `EMBER_BIN` overrides the binary.
"""

import http.client
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[3]
EMBER = Path(os.environ.get("EMBER_BIN", REPO / "target" / "release" / "ember"))
KEY = "test"
CTX = 512
PARALLEL = 2


def model_path() -> Path:
    if os.environ.get("EMBER_TEST_MODEL"):
        return Path(os.environ["EMBER_TEST_MODEL"])
    home = os.environ.get("EMBER_HOME") or str(Path.home() / ".cache" / "ember")
    return Path(home) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Server:
    """One `ember serve` process; `url` is its base address once it says it is listening."""

    def __init__(self) -> None:
        assert EMBER.is_file(), f"{EMBER} not found: run `make build` (or set EMBER_BIN)"
        model = model_path()
        assert model.is_file(), f"test model not found at {model}: run `make model`"
        cmd = [str(EMBER), "serve", "-m", str(model), "--host", "127.0.0.1", "--port", "0",
               "--api-key", KEY, "--ctx", str(CTX), "--parallel", str(PARALLEL), "--model-alias", "smol"]
        env = dict(os.environ, EMBER_OFFLINE="1")
        env.pop("EMBER_API_KEY", None)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.log: list[str] = []
        self.url = self._wait_listening(timeout=60)
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                if line.startswith("listening on http://"):
                    found.append(line.split()[-1])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError("ember serve did not start:\n" + "".join(self.log))
        return found[0]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()
    assert "panicked" not in "".join(s.log), "".join(s.log)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, content, **kw):
    return client.chat.completions.create(model="smol", messages=[{"role": "user", "content": content}], **kw)


def test_health_and_models(server, client):
    assert server.health() == {"status": "ok", "slots": PARALLEL, "slots_busy": 0}
    assert [m.id for m in client.models.list()] == ["smol"]


def test_chat_stream_equals_plain_answer(client):
    question = "What are the three primary colors?"
    plain = chat(client, question, max_tokens=24, temperature=0)
    assert plain.object == "chat.completion"
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")

    chunks = list(chat(client, question, max_tokens=24, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    joined = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert joined == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_completion_stream_equals_plain_answer(client):
    prompt = "The three primary colors are"
    plain = client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0)
    assert plain.object == "text_completion"
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 16
    stream = client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_usage_counts_agree(client):
    plain = chat(client, "Name a fruit.", max_tokens=8, temperature=0)
    u = plain.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    chunks = list(chat(client, "Name a fruit.", max_tokens=8, temperature=0, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == u
    assert all(c.usage is None for c in chunks[:-1])
    # A prompt given as token ids counts exactly those tokens.
    ids = [504, 3575, 282, 4649, 314]
    by_ids = client.completions.create(model="smol", prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.usage.prompt_tokens == len(ids)


def test_stop_strings(client):
    prompt = "1, 2, 3, 4, 5,"
    full = client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    stop = full.strip()[:2]
    assert stop, f"empty answer {full!r}"
    expected = full[: full.index(stop)]
    cut = client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_errors(server, client):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        chat(wrong, "Hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=f"the context holds {CTX}"):
        chat(client, "word " * (2 * CTX), max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=f"the context holds {CTX}"):
        list(client.completions.create(model="smol", prompt="word " * (2 * CTX), max_tokens=2, stream=True))
    with pytest.raises(openai.BadRequestError, match="not supported"):
        chat(client, "Hi", max_tokens=2, n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "Hi", max_tokens=2, temperature=-1)


def test_client_leaving_mid_stream_frees_its_slot(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": CTX, "ignore_eos": True, "stream": True})
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(7) == b"data: {"
    assert server.health()["slots_busy"] == 1
    conn.sock.close()
    response.close()
    t0 = time.monotonic()
    while server.health()["slots_busy"] != 0:
        assert time.monotonic() - t0 < 5, "the slot is still busy 5 s after the client left"
        time.sleep(0.02)


LOAD_CLIENTS = 8
LOAD_REQUESTS = 10
LOAD_MAX_TOKENS = 12
LOAD_PROMPTS = [
    "Name a color.", "Name an animal.", "What is 3 + 4?", "Say hello in French.",
    "Name a planet.", "What is the opposite of hot?", "Name a vegetable.", "Spell the word cat.",
]


def test_load_answers_never_mix(server, client):
    """8 clients x 10 requests at once; every answer equals the one its prompt gets alone."""
    alone = {p: chat(client, p, max_tokens=LOAD_MAX_TOKENS, temperature=0).choices[0].message.content
             for p in LOAD_PROMPTS}
    assert len(set(alone.values())) > 1, "the prompts should get different answers"

    def one_client(prompt):
        own = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        latencies = []
        for _ in range(LOAD_REQUESTS):
            t0 = time.monotonic()
            answer = chat(own, prompt, max_tokens=LOAD_MAX_TOKENS, temperature=0).choices[0].message.content
            latencies.append(time.monotonic() - t0)
            assert answer == alone[prompt], f"{prompt!r} got {answer!r}, alone {alone[prompt]!r}"
        return latencies

    t0 = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        latencies = sorted(x for lat in pool.map(one_client, LOAD_PROMPTS) for x in lat)
    wall = time.monotonic() - t0
    n = len(latencies)
    assert n == LOAD_CLIENTS * LOAD_REQUESTS
    p50 = statistics.median(latencies)
    p95 = latencies[min(n - 1, round(0.95 * n) - 1)]
    print(f"\nload: {n} chat requests ({LOAD_CLIENTS} clients x {LOAD_REQUESTS}, max_tokens {LOAD_MAX_TOKENS}, "
          f"temperature 0, --parallel {PARALLEL}, {os.cpu_count()} cores) in {wall:.1f} s: "
          f"{n / wall:.2f} requests/s, latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    assert server.health()["slots_busy"] == 0
