#!/usr/bin/env python3
"""Ember against llama.cpp (the peer) on this machine: prefill and decode tokens/s, peak RSS,
and how close each engine's decode comes to the memory-bandwidth bound.

Method (the one of shared/reference/llama.cpp.md, i.e. `llama-bench -p P -n N`): per
repetition, a fresh KV cache; a prefill of P tokens as one batch; then N decode steps of one
token each (greedy next token); each timed. Both engines prefill the same pseudo-random ids
(splitmix64, seed 42, as `ember bench` draws them). Every repetition is a fresh process that
loads the model, runs one untimed warm-up repetition and one timed one; the two engines
alternate (ember, llama.cpp, ember, ...) so drifts in machine speed hit both alike. Reported
figures are medians over repetitions.

The peer is llama-cpp-python (pinned version, built from source with native CPU flags) in its own
virtual environment, run as a subprocess so the engines never share a process.

Not part of CI. See benches/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_VERSION = "0.3.36"
DEFAULT_VENV = Path(os.environ.get("EMBER_PEER_VENV", Path.home() / ".cache/ember/peer-venv"))
DEFAULT_MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]

# The peer's side, run with the venv's python: argv[1] is a JSON object of parameters; prints
# one JSON line. Mirrors `ember bench --reps 1`: load, warm-up repetition, one timed repetition.
PEER_WORKER = r"""
import json, resource, sys, time
import numpy as np
import llama_cpp
from llama_cpp import Llama

cfg = json.loads(sys.argv[1])
p, n, t = cfg["p"], cfg["n"], cfg["threads"]

def splitmix_ids(seed, count, vocab):
    mask, state, out = (1 << 64) - 1, seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append(z % vocab)
    return out

llm = Llama(model_path=cfg["model"], n_ctx=p + n + 16, n_threads=t, n_threads_batch=t,
            n_batch=max(p, 1), n_ubatch=max(p, 1), verbose=False, logits_all=False)
n_vocab = llm.n_vocab()
vocab = min(n_vocab, cfg.get("vocab") or n_vocab)
ids = splitmix_ids(cfg["seed"], max(p, 1), vocab)
prompt, first = ids[:p], ids[0]

def last_logits():
    # With logits_all=False, Llama.eval asks llama.cpp for the last position's logits only and
    # (in 0.3.x) does not copy them into llm.scores: read them from the context directly.
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))

def one_rep():
    llm.reset()                      # n_tokens = 0 ...
    llm._ctx.kv_cache_clear()        # ... and an empty KV cache: a fresh sequence
    nxt, tp, td = first, None, None
    if p:
        t0 = time.perf_counter()
        llm.eval(prompt)
        nxt = int(np.argmax(last_logits()))
        tp = time.perf_counter() - t0
    if n:
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([nxt])
            nxt = int(np.argmax(last_logits()))
        td = time.perf_counter() - t0
    return tp, td

one_rep()                            # warm-up, not counted
tp, td = one_rep()
print(json.dumps({
    "prefill_tps": p / tp if tp else None,
    "decode_tps": n / td if td else None,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "version": llama_cpp.__version__,
}))
"""

# Memory read bandwidth: T threads each sum a slice of a buffer of 64-bit integers (integer adds
# vectorise without -ffast-math and cost far less than the memory traffic); best of R passes.
MEMBW_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef struct { const uint64_t *p; size_t n; uint64_t sum; } job_t;
static void *sum_slice(void *arg) {
    job_t *j = arg; uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0; size_t i = 0;
    for (; i + 4 <= j->n; i += 4) { s0 += j->p[i]; s1 += j->p[i+1]; s2 += j->p[i+2]; s3 += j->p[i+3]; }
    for (; i < j->n; i++) s0 += j->p[i];
    j->sum = s0 + s1 + s2 + s3; return NULL;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    size_t bytes = (size_t)(atof(argv[1]) * 1073741824.0); int threads = atoi(argv[2]), reps = atoi(argv[3]);
    size_t n = bytes / 8; uint64_t *p = aligned_alloc(64, n * 8 + 64), check = 0; double best = 0;
    if (!p || threads < 1 || threads > 256) return 2;
    for (size_t i = 0; i < n; i++) p[i] = i;
    for (int r = 0; r < reps; r++) {
        pthread_t th[256]; job_t jobs[256]; size_t per = n / threads;
        double t0 = now();
        for (int k = 0; k < threads; k++) {
            jobs[k].p = p + k * per; jobs[k].n = k == threads - 1 ? n - k * per : per;
            pthread_create(&th[k], NULL, sum_slice, &jobs[k]);
        }
        for (int k = 0; k < threads; k++) { pthread_join(th[k], NULL); check += jobs[k].sum; }
        double gbps = n * 8.0 / (now() - t0) / 1e9; if (gbps > best) best = gbps;
    }
    printf("%.3f %llu\n", best, (unsigned long long)check);
    return 0;
}
"""


def log(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


# ---- set-up -------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def peer_version(py: Path) -> str | None:
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import llama_cpp, numpy; print(llama_cpp.__version__)"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_peer(venv: Path, version: str) -> Path:
    """The venv's python with llama-cpp-python==version importable (installed when missing)."""
    py = venv_python(venv)
    if peer_version(py) == version:
        log(f"llama-cpp-python {version} already in {venv}")
        return py
    if not py.exists():
        log(f"creating the virtual environment {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", peer_cmake_args())
    log(f"installing llama-cpp-python=={version} into {venv} (builds llama.cpp: several minutes), "
        f"CMAKE_ARGS={env['CMAKE_ARGS']}")
    subprocess.run([str(py), "-m", "pip", "install", "--no-cache-dir", f"llama-cpp-python=={version}", "numpy"],
                   check=True, stdout=sys.stderr, env=env)
    got = peer_version(py)
    if got != version:
        sys.exit(f"compare: llama-cpp-python {version} is still not importable from {py} (got {got})")
    return py


def peer_cmake_args() -> str:
    """llama.cpp's build flags: this CPU's vector extensions named one by one instead of
    GGML_NATIVE, and AMX off. Virtual machines may list AMX in /proc/cpuinfo without enabling its
    tile state, and a native build then dies of SIGILL at its first `tilezero` (seen on a Xeon
    guest). Set CMAKE_ARGS to override."""
    flags = set(cpu_flags().split())
    wanted = [("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("bmi2", "BMI2"), ("avx_vnni", "AVX_VNNI"),
              ("avx512f", "AVX512"), ("avx512vbmi", "AVX512_VBMI"), ("avx512_vnni", "AVX512_VNNI"),
              ("avx512_bf16", "AVX512_BF16")]
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON"] + [f"-DGGML_{name}=ON" for flag, name in wanted if flag in flags]
    return " ".join(args + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"])


def build_ember() -> None:
    log("cargo build --release -p ember-cli")
    subprocess.run(["cargo", "build", "--release", "-p", "ember-cli"], cwd=REPO, check=True,
                   stdout=sys.stderr)


def ember_binary(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "ember"


def resolve_model(ember: Path, model: str) -> Path:
    """A known name or a path → the model file, as `ember info` resolves it."""
    r = subprocess.run([str(ember), "info", "--model", model], capture_output=True, text=True,
                       env={**os.environ, "EMBER_QUIET": "1"})
    if r.returncode != 0:
        sys.exit(f"compare: ember info --model {model} failed:\n{r.stderr}")
    for line in r.stdout.splitlines():
        if line.startswith("file "):
            return Path(line.split(None, 1)[1].strip())
    sys.exit(f"compare: no 'file' line in `ember info --model {model}`")


# ---- memory bandwidth --------------------------------------------------------------------------

def memory_bandwidth(threads: list[int], gib: float, reps: int, py: Path) -> dict[int, float]:
    """Best-of-reps read bandwidth in GB/s (1e9 bytes/s) for each thread count."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    out: dict[int, float] = {}
    if cc:
        with tempfile.TemporaryDirectory() as d:
            src, exe = Path(d) / "membw.c", Path(d) / "membw"
            src.write_text(MEMBW_C)
            subprocess.run([cc, "-O3", "-march=native", "-pthread", "-o", str(exe), str(src)], check=True)
            for t in threads:
                r = subprocess.run([str(exe), str(gib), str(t), str(reps)], capture_output=True, text=True, check=True)
                out[t] = float(r.stdout.split()[0])
        return out
    # No C compiler: numpy's sum over a float32 array, one thread (reported for every count).
    log("no C compiler: measuring bandwidth with numpy, one thread")
    code = ("import numpy as np, time, sys\n"
            f"a = np.ones(int({gib} * 2**30) // 4, dtype=np.float32); best = 0\n"
            f"for _ in range({reps}):\n"
            "    t0 = time.perf_counter(); a.sum(); best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)\n"
            "print(best)\n")
    gbps = float(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout)
    return {t: gbps for t in threads}


# ---- the two engines -----------------------------------------------------------------------

def run_ember(ember: Path, model: Path, p: int, n: int, threads: int, seed: int) -> dict:
    cmd = [str(ember), "bench", "--json", "-p", str(p), "-n", str(n), "--reps", "1",
           "--threads", str(threads), "--seed", str(seed), "--model", str(model)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"compare: {' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_peer(py: Path, model: Path, p: int, n: int, threads: int, seed: int, vocab: int | None) -> dict:
    cfg = {"model": str(model), "p": p, "n": n, "threads": threads, "seed": seed, "vocab": vocab}
    r = subprocess.run([str(py), "-c", PEER_WORKER, json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        hint = " (SIGILL: an instruction this CPU lacks; rebuild the peer, see peer_cmake_args)" if r.returncode in (-4, 132) else ""
        sys.exit(f"compare: the llama.cpp worker failed on {model} with status {r.returncode}{hint}:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---- report --------------------------------------------------------------------------------

def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.0f} MiB"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ["avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw",
                                            "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_int8"]
                                if f in flags)
    except OSError:
        pass
    return ""


def report(results: list[dict], bandwidth: dict[int, float], meta: dict) -> str:
    p, n = meta["p"], meta["n"]
    lines = [
        f"Date: {meta['date']}  ",
        f"CPU: {meta['cpu']} × {os.cpu_count()} logical ({meta['cpu_flags']})  ",
        f"Command: `{meta['command']}`  ",
        f"Peer: llama-cpp-python {meta['peer_version']}; Ember {meta['ember_commit']}; "
        f"prefill pp{p} as one batch, decode tg{n} one token at a time; "
        f"{meta['reps']} alternating reps per engine (each a fresh process: load, warm-up, one timed rep); medians.  ",
        f"Load average (1/5/15 min): {meta['loadavg']}.",
        "",
        "| model | threads | prefill Ember t/s | prefill llama.cpp t/s | ratio | decode Ember t/s | decode llama.cpp t/s | ratio | peak RSS Ember | peak RSS llama.cpp |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        e, l = r["ember_median"], r["peer_median"]
        lines.append(
            f"| {r['label']} | {r['threads']} | {fmt(e['prefill_tps'])} | {fmt(l['prefill_tps'])} | "
            f"{ratio(e['prefill_tps'], l['prefill_tps'])} | {fmt(e['decode_tps'])} | {fmt(l['decode_tps'])} | "
            f"{ratio(e['decode_tps'], l['decode_tps'])} | {mib(e['peak_rss_bytes'])} | {mib(l['peak_rss_bytes'])} |")
    lines += [
        "",
        "Memory read bandwidth (sum over a {:.0f} GiB buffer, best of {}): {}.".format(
            meta["bw_gib"], meta["bw_reps"],
            ", ".join(f"{bandwidth[t]:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t in sorted(bandwidth))),
        "Decode bound = weight bytes read per token (`ember info`: every matrix once, a tied embedding once "
        "as the output) ÷ bandwidth.",
        "",
        "| model | threads | read per token | decode bound t/s | Ember % of bound | llama.cpp % of bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    if n:
        for r in results:
            bound = bandwidth[r["threads"]] * 1e9 / r["weight_bytes_per_token"]
            e, l = r["ember_median"]["decode_tps"], r["peer_median"]["decode_tps"]
            pct = lambda x: "–" if x is None else f"{100 * x / bound:.0f}%"
            lines.append(f"| {r['label']} | {r['threads']} | {r['weight_bytes_per_token'] / 1e6:.1f} MB | "
                         f"{bound:.0f} | {pct(e)} | {pct(l)} |")
    return "\n".join(lines)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def git_commit() -> str:
    r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                    help="known names or GGUF paths (default: %(default)s)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    ap.add_argument("-p", type=int, default=512, help="prefill tokens, one batch (default: %(default)s)")
    ap.add_argument("-n", type=int, default=128, help="decode steps (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per engine, alternating (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the prompt ids (default: %(default)s)")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                    help="virtual environment of the peer (default: %(default)s; env EMBER_PEER_VENV)")
    ap.add_argument("--peer-version", default=PEER_VERSION, help="llama-cpp-python version (default: %(default)s)")
    ap.add_argument("--ember", help="the ember binary (default: target/release/ember, built first)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--bw-gib", type=float, default=1.0, help="bandwidth buffer size in GiB (default: %(default)s)")
    ap.add_argument("--bw-reps", type=int, default=10, help="bandwidth passes, best kept (default: %(default)s)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the raw figures to OUT")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    if a.reps < 1 or a.p < 0 or a.n < 0 or a.p + a.n == 0 or not threads:
        ap.error("need --reps ≥ 1, -p/-n ≥ 0 and not both 0, and at least one thread count")

    py = ensure_peer(a.venv, a.peer_version)
    if not a.ember and not a.no_build:
        build_ember()
    ember = ember_binary(a.ember)
    models = [(m, resolve_model(ember, m)) for m in a.models]

    log(f"memory bandwidth, threads {threads}")
    bandwidth = memory_bandwidth(threads, a.bw_gib, a.bw_reps, py)
    log("  " + ", ".join(f"{t}: {g:.1f} GB/s" for t, g in bandwidth.items()))

    load_before = loadavg()
    results, peer_ver = [], None
    for label, path in models:
        for t in threads:
            runs = {"ember": [], "peer": []}
            for rep in range(a.reps):
                e = run_ember(ember, path, a.p, a.n, t, a.seed)
                runs["ember"].append(e)
                l = run_peer(py, path, a.p, a.n, t, a.seed, e.get("vocab"))
                runs["peer"].append(l)
                peer_ver = l.get("version")
                log(f"{path.name} threads {t} rep {rep + 1}/{a.reps}: "
                    f"ember pp {fmt(e['prefill_tps'])} tg {fmt(e['decode_tps'])} | "
                    f"llama.cpp pp {fmt(l['prefill_tps'])} tg {fmt(l['decode_tps'])}")
            med = lambda rs: {k: median([r[k] for r in rs]) for k in ("prefill_tps", "decode_tps", "peak_rss_bytes")}
            results.append({
                "label": path.name, "model": label, "path": str(path), "threads": t,
                "weight_bytes_per_token": runs["ember"][0]["weight_bytes_per_token"],
                "ember": runs["ember"], "peer": runs["peer"],
                "ember_median": med(runs["ember"]), "peer_median": med(runs["peer"]),
            })

    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(), "cpu_flags": cpu_flags(),
        "command": " ".join(shlex.quote(x) for x in [sys.argv[0], *sys.argv[1:]]),
        "peer_version": peer_ver, "ember_commit": git_commit(),
        "p": a.p, "n": a.n, "reps": a.reps, "bw_gib": a.bw_gib, "bw_reps": a.bw_reps,
        "loadavg": f"{load_before} before, {loadavg()} after",
    }
    print(report(results, bandwidth, meta))
    if a.json:
        a.json.write_text(json.dumps({**meta, "bandwidth_gbps": bandwidth, "results": results}, indent=1) + "\n")
        log(f"raw figures written to {a.json}")


if __name__ == "__main__":
    main()
