"""One decode step on the card taken apart: where ours spends the time native `llama-bench` tg does not.

    python bench/gpu_profile.py MODEL.gguf [MODEL.gguf ...]

For each model, every layer on the first card, 128 single-token decodes after a short prompt, the median
of three runs, in microseconds a token:
  native tg128       llama-bench (the yardstick; with CUDA graphs and without, GGML_CUDA_DISABLE_GRAPHS);
  C loop             llama_decode + llama_synchronize from Python, one prepared batch: llama.cpp alone, with our
                     context shape (one KV sequence on a card, n_ctx 2048) and variants of it (two sequences, threads);
  + logits, sampler  the same, then the logits row read and the next token chosen (greedy chain; argmax);
  decoder.step       our loop as the bench times it, and the time inside it by stage.
A child process repeats the C loop with CUDA graphs disabled: if ours does not slow down, it never used them.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp as C
import numpy as np
from native import llama_bench

from appliance.runtime.engine_settings import EngineSettings, resolve
from appliance.runtime.llama import LlamaEngine
from appliance.runtime.sampler import GREEDY, NativeSampler, SamplingSettings
from appliance.runtime.session import Runtime
from appliance.trust.builtin import VerifiedModel

N = 128
PROMPT = list(range(100, 132))


def _median_us(run, rounds: int = 3) -> float:
    return statistics.median(run() for _ in range(rounds)) / N * 1e6


def _c_loop(engine: LlamaEngine, seq: int, then=None) -> float:
    """Seconds for N single-token decodes at the C API (one prepared batch), each followed by `then()`."""
    engine.forget_all()
    engine.decode_tokens(PROMPT, 0, seq=seq)
    batch = C.llama_batch_init(1, 0, 1)
    batch.n_tokens, batch.token[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 1000, 1, seq, True
    t = time.perf_counter()
    for k in range(N):
        batch.pos[0] = len(PROMPT) + k
        if C.llama_decode(engine.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        C.llama_synchronize(engine.ctx)
        if then is not None:
            then()
    seconds = time.perf_counter() - t
    C.llama_batch_free(batch)
    return seconds


def native(path: Path) -> dict:
    exe = llama_bench(cuda=True)
    rows = {}
    for label, env in (("native tg128", {}), ("native tg128, CUDA graphs off", {"GGML_CUDA_DISABLE_GRAPHS": "1"})):
        out = subprocess.run(
            [str(exe), "-m", str(path), "-p", "0", "-n", str(N), "-ngl", "999", "-fa", "0", "-r", "3", "-o", "json"],
            check=True, capture_output=True, text=True, env={**os.environ, **env},
        ).stdout  # fmt: skip
        rows[label] = 1e6 / float(json.loads(out)[0]["avg_ts"])
    return rows


def ours(path: Path) -> dict:
    settings, note = resolve("all", path, EngineSettings(n_ctx=2048))
    if settings.gpu is None:
        raise RuntimeError(f"no card: {note}")
    rows = {}
    engine = LlamaEngine(path, settings.replace(sequences=2))  # the shape before one sequence on a card
    rows[f"C loop, 2 sequences, {engine.n_threads} threads"] = _median_us(lambda: _c_loop(engine, 0))
    rows["C loop, 2 sequences, the second"] = _median_us(lambda: _c_loop(engine, 1))
    for n in (1, 4, 8):
        engine.set_threads(n)
        rows[f"C loop, 2 sequences, {n} threads"] = _median_us(lambda: _c_loop(engine, 0))
    engine.set_threads(settings.n_threads or engine.governor.max)
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
    rows["C loop + llama_sampler_sample, greedy chain"] = _median_us(
        lambda: _c_loop(engine, 0, lambda: C.llama_sampler_sample(chain, engine.ctx, -1))
    )
    ours_greedy = NativeSampler(engine, GREEDY, [])
    rows["C loop + our greedy sampler (argmax of the row)"] = _median_us(lambda: _c_loop(engine, 0, ours_greedy))
    rows["C loop + last_logits()"] = _median_us(lambda: _c_loop(engine, 0, engine.last_logits))
    rows["C loop + argmax(last_logits())"] = _median_us(lambda: _c_loop(engine, 0, lambda: np.argmax(engine.last_logits())))
    default = NativeSampler(engine, SamplingSettings(), PROMPT)
    rows["C loop + default chat chain (penalty, temp, top-k, top-p, draw)"] = _median_us(lambda: _c_loop(engine, 0, default))
    default.close()
    ours_greedy.close()
    C.llama_sampler_free(chain)
    engine.close()
    one = LlamaEngine(path, settings)
    rows["C loop, one sequence (resolve's shape on a card)"] = _median_us(lambda: _c_loop(one, 0))
    one.close()

    rt = Runtime(VerifiedModel("profiled", 1, path, "0" * 64), settings)
    stages: dict[str, list[float]] = {"decode_tokens": [], "last_logits (waits for the card)": [], "sample": []}

    def timed(step) -> float:
        """N decode steps from a fresh prefill, each `step(sampler)`; seconds in all."""
        rt.decoder.reset()
        rt.decoder.prefill(PROMPT)
        sampler = NativeSampler(rt.engine, GREEDY, PROMPT)
        t = time.perf_counter()
        for _ in range(N):
            step(sampler)
        seconds = time.perf_counter() - t
        sampler.close()
        return seconds

    def staged_step(sampler: NativeSampler) -> None:
        a = time.perf_counter()
        token = sampler()
        b = time.perf_counter()
        rt.engine.decode_tokens([token], len(rt.decoder.current.tokens), seq=rt.decoder.current.seq_id)
        c = time.perf_counter()
        rt.engine.last_logits()
        d = time.perf_counter()
        rt.decoder.current.tokens.append(token)
        stages["sample"].append(b - a)
        stages["decode_tokens"].append(c - b)
        stages["last_logits (waits for the card)"].append(d - c)

    rows["decoder.step loop (the bench's)"] = _median_us(lambda: timed(lambda sampler: rt.decoder.step(sampler())))
    rows["staged loop"] = _median_us(lambda: timed(staged_step))
    for name, times in stages.items():
        rows[f"  stage: {name}"] = statistics.median(times) * 1e6
    rt.close()
    return rows


def graphs_off_child(path: Path) -> dict:
    """The C loop again in a process where CUDA graphs are disabled (ggml reads the variable once)."""
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import gpu_profile as g; from pathlib import Path;"
        "from appliance.runtime.engine_settings import EngineSettings, resolve;"
        "from appliance.runtime.llama import LlamaEngine;"
        f"s, _ = resolve('all', Path({str(path)!r}), EngineSettings(n_ctx=2048)); e = LlamaEngine(Path({str(path)!r}), s);"
        "print(json.dumps({'C loop, ours, CUDA graphs off': g._median_us(lambda: g._c_loop(e, 0))}))"
    )
    env = {**os.environ, "GGML_CUDA_DISABLE_GRAPHS": "1"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        rows = {**native(path), **ours(path), **graphs_off_child(path)}
        print(f"\n{path.name}: microseconds a token (median of 3 runs of {N} tokens)")
        for name, us in rows.items():
            print(f"  {name:<70} {us:8.1f}")


if __name__ == "__main__":
    main()
