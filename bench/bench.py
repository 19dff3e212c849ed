"""Benchmarks of the brief's performance targets, measured side by side in one run.

Each comparison interleaves its contenders round by round and reports medians,
so a noisy shared machine slows both sides alike. Prints a table of ratios and
whether each target is met. Run: ./run bench [--rounds N] [--tokens N]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.llama import reference_llama
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.trust.hashing import sha256_file

PROMPT = "Write a long, detailed essay about the history of radio communication."
N_CTX = 2048


def median_of(rounds: int, contenders: dict) -> dict:
    """Run each contender once per round, in turn; return the median of what each returned."""
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(fn())
    return {name: statistics.median(v) for name, v in results.items()}


def decode_speed(model, rounds: int, n_tokens: int) -> tuple[list[tuple], list[int]]:
    threads = os.cpu_count()
    runtime = Runtime(model, n_ctx=N_CTX, n_threads=threads)
    reference = reference_llama(model.path, n_ctx=N_CTX, n_threads=threads)
    overlay = Overlay(OverlayParams.random(runtime.engine.n_embd, seed=1), model.sha256)
    prompt = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": PROMPT}]))
    runtime.embeddings  # load the table outside the timed region, as a running chat would have

    def theirs():
        reference.reset()
        t = time.perf_counter()
        out = reference.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - t)

    def ours(on: bool):
        def run():
            runtime.decoder.reset()
            s = Session(runtime, overlay=overlay, overlay_on=on, settings=GREEDY)
            t = time.perf_counter()
            reply = s.generate(PROMPT, max_tokens=n_tokens)
            return len(reply.tokens) / (time.perf_counter() - t)

        return run

    m = median_of(rounds, {"ref": theirs, "off": ours(False), "on": ours(True)})
    rows = [
        ("decode tok/s, llama-cpp-python create_completion", f"{m['ref']:.1f}", "", ""),
        ("decode tok/s, ours, overlay off", f"{m['off']:.1f}", f"{m['off'] / m['ref']:.3f}", ">= 1.05"),
        ("decode tok/s, ours, overlay on", f"{m['on']:.1f}", f"{m['on'] / m['ref']:.3f}", ">= 1.0"),
    ]

    # The toggle: a flag flip, then the next reply re-prefills the whole context.
    s = Session(runtime, overlay=overlay, settings=GREEDY)
    for q in ("Name three radio bands.", "Which one travels furthest?", "Why?"):
        s.generate(q, max_tokens=48)
    flips = []
    for _ in range(1001):
        t = time.perf_counter_ns()
        s.toggle()
        flips.append(time.perf_counter_ns() - t)
    reply = s.generate("Summarise.", max_tokens=1)  # odd number of flips: the state changed
    rows += [
        ("overlay toggle flip, ms (median of 1001)", f"{statistics.median(flips) / 1e6:.4f}", "", "<= 1 ms"),
        (f"re-prefill after toggle, ms ({reply.prefill_tokens} tokens)", f"{reply.prefill_seconds * 1e3:.1f}", "", "reported"),
    ]
    runtime.close()
    return rows, prompt


def cold_start(model_pin, rounds: int, prompt_tokens: list[int]) -> list[tuple]:
    """Load + first token of the same chat prompt. Ours includes hashing the whole model against its pin."""

    def ours():
        t = time.perf_counter()
        rt = Runtime(verify_pinned(model_pin), n_ctx=N_CTX)
        Session(rt, settings=GREEDY).generate(PROMPT, max_tokens=1)
        dt = time.perf_counter() - t
        rt.close()
        return dt

    def theirs():
        t = time.perf_counter()
        llm = reference_llama(model_pin.path, n_ctx=N_CTX, n_threads=os.cpu_count())
        llm.create_completion(prompt_tokens, max_tokens=1, temperature=0.0)
        dt = time.perf_counter() - t
        llm.close()
        return dt

    m = median_of(rounds, {"ours": ours, "theirs": theirs})
    return [
        ("cold start to first token, llama-cpp-python, ms", f"{m['theirs'] * 1e3:.0f}", "", ""),
        ("cold start to first token, ours (+ verification), ms", f"{m['ours'] * 1e3:.0f}", f"{m['ours'] / m['theirs']:.3f}", "<= 1.5"),
    ]


def hashing(paths: list[Path], rounds: int) -> list[tuple]:
    rows = []
    for path in paths:
        size = path.stat().st_size

        def ours():
            t = time.perf_counter()
            sha256_file(path)
            return size / (time.perf_counter() - t)

        def openssl():
            t = time.perf_counter()
            subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)
            return size / (time.perf_counter() - t)

        m = median_of(rounds, {"ours": ours, "openssl": openssl})
        label = f"{path.name} ({size / 2**20:.0f} MiB)"
        rows += [
            (f"sha256 MB/s, openssl dgst, {label}", f"{m['openssl'] / 1e6:.0f}", "", ""),
            (f"sha256 MB/s, ours, {label}", f"{m['ours'] / 1e6:.0f}", f"{m['ours'] / m['openssl']:.3f}", ">= 0.9"),
        ]
    return rows


def verdict(ratio: str, target: str) -> str:
    if not ratio or not target or target == "reported":
        return ""
    op, bound = target.split()[0], float(target.split()[1])
    value = float(ratio)
    return "met" if (value >= bound if op == ">=" else value <= bound) else "NOT MET"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hash-mib", type=int, default=1024, help="size of the extra file hashed (0 to skip)")
    args = ap.parse_args()

    pin = embedded_pin()
    model = verify_pinned(pin)
    rows, prompt_tokens = decode_speed(model, args.rounds, args.tokens)
    rows += cold_start(pin, args.rounds, prompt_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        files = [model.path]
        if args.hash_mib:
            big = Path(tmp) / "random.bin"
            with open(big, "wb") as f:
                for _ in range(args.hash_mib):
                    f.write(os.urandom(1 << 20))
            files.append(big)
        rows += hashing(files, args.rounds)

    # Flip-time rows carry their value, not a ratio, as the thing to judge.
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'ratio':>7}  {'target':>8}  verdict")
    for name, value, ratio, target in rows:
        judged = verdict(value if "flip" in name else ratio, target)
        print(f"{name:<{width}}  {value:>10}  {ratio:>7}  {target:>8}  {judged}")


if __name__ == "__main__":
    main()
