"""Costs as the base grows: each base taken through the whole life of an imported base, one block of rows per size.

Bases, smallest first: the embedded SmolLM2 135M and Gemma 3 270M (real weights, imported as bundles), then
synthetic Llama-shaped bases (Llama 3.2 1B and 3B, Llama 3.1 8B: their layer counts and widths) with random
Q8_0 or Q4_K weights and the embedded model's tokenizer, written here with the `gguf` package. Each is
bundled, signed by two signers and then, on this machine:

- imported (verify + encrypt + the GGUF probe), MB/s against `openssl dgst -sha256` over the same bundle;
- made active (`base use`: decrypt + hash + journal + commit), seconds;
- started cold to a first token, ours from the encrypted store against llama-cpp-python opening the
  plaintext file (our model parameters: no AMX repacking, which ends the process on this CPU for Q8_0);
- decoded, ours against native `llama-bench` (bench/native.py), tokens/s;
- answered once by `appliance ask` in a child, whose peak RSS is set against what runtime/memory.py says
  the base needs (GGUF + KV cache + compute buffer + 15 %);
- verified (`appliance verify`'s work: the active base and every installed version), seconds;
- crypto-erased (`erase base`), ms.

A size the disk or memory here cannot hold (three copies on disk: GGUF, bundle, store; the base twice in
memory: ours and the reference) prints why it was skipped. Every file is deleted once its size is done.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from load import free_threads
from native import _native, _peak_rss_mib, llama_bench

from appliance.erase import erase_item
from appliance.runtime.llama import reference_llama
from appliance.runtime.memory import gguf_shape, runtime_need
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import N_BATCH, Runtime, Session
from appliance.store import verify_installed
from appliance.store.bases import active_base, active_model, close_model
from appliance.trust.builtin import embedded_pin
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.vault import Vault

N_CTX = 2048  # the window the cold start and the decode run with, as the other bench rows
ASK_CTX, ASK_SEQUENCES = 4096, 2  # what `appliance ask` allocates (runtime/session.py defaults)


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture base: the widths that set its size (the vocabulary is the embedded model's)."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int


SHAPES = {  # the published configurations of Llama 3.2 1B and 3B and Llama 3.1 8B
    "1B": Shape(16, 2048, 8192, 32, 8),
    "3B": Shape(28, 3072, 8192, 24, 8),
    "8B": Shape(32, 4096, 14336, 32, 8),
}
REAL = ("smollm2", "gemma")  # the embedded model and Gemma 3 270M, as imported bases
QUANT = {"Q8_0": GGMLQuantizationType.Q8_0, "Q4_K": GGMLQuantizationType.Q4_K}
SCALES = {  # fp16 bytes in every block that scale its integers: small, so the random weights stay finite
    GGMLQuantizationType.Q8_0: [(0, 3e-4)],  # d, then 32 int8
    GGMLQuantizationType.Q4_K: [(0, 2e-5), (2, 2e-5)],  # d, dmin, then 6-bit scales and 4-bit values
}


def write_llama(path: Path, shape: Shape, qtype: GGMLQuantizationType, tokenizer_from: Path, seed: int = 0) -> None:
    """A Llama GGUF of `shape` with random `qtype` weights (norms 1.0) and the tokenizer of `tokenizer_from`,
    written tensor by tensor (never the whole model in memory)."""
    tokenizer = _tokenizer(tokenizer_from)
    n_vocab = len(tokenizer["tokenizer.ggml.tokens"][0])
    writer = GGUFWriter(path, "llama")
    writer.add_name(f"synthetic llama {path.stem}")
    writer.add_context_length(8192)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    for name, (value, value_type, sub_type) in tokenizer.items():
        writer.add_key_value(name, value, value_type, sub_type)

    kv = shape.n_head_kv * (shape.n_embd // shape.n_head)
    tensors: list[tuple[str, tuple[int, int]]] = [("token_embd.weight", (n_vocab, shape.n_embd))]  # (rows, row length)
    for i in range(shape.n_layer):
        tensors += [
            (f"blk.{i}.attn_q.weight", (shape.n_embd, shape.n_embd)),
            (f"blk.{i}.attn_k.weight", (kv, shape.n_embd)),
            (f"blk.{i}.attn_v.weight", (kv, shape.n_embd)),
            (f"blk.{i}.attn_output.weight", (shape.n_embd, shape.n_embd)),
            (f"blk.{i}.ffn_gate.weight", (shape.n_ff, shape.n_embd)),
            (f"blk.{i}.ffn_up.weight", (shape.n_ff, shape.n_embd)),
            (f"blk.{i}.ffn_down.weight", (shape.n_embd, shape.n_ff)),
        ]
    norms = ["output_norm.weight"] + [f"blk.{i}.{n}_norm.weight" for i in range(shape.n_layer) for n in ("attn", "ffn")]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    for name, (rows, length) in tensors:
        row_bytes = length // block * block_bytes
        writer.add_tensor_info(name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, raw_dtype=qtype)
    for name in norms:
        writer.add_tensor_info(name, (shape.n_embd,), np.dtype(np.float32), 4 * shape.n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for _, (rows, length) in tensors:
        blocks = rng.integers(0, 256, size=(rows, length // block, block_bytes), dtype=np.uint8)
        for offset, scale in SCALES[qtype]:
            blocks[:, :, offset : offset + 2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
        writer.write_tensor_data(blocks.reshape(rows, -1))
    for _ in norms:
        writer.write_tensor_data(np.ones(shape.n_embd, dtype=np.float32))
    writer.close()


@cache
def _tokenizer(gguf: Path) -> dict[str, tuple[Any, GGUFValueType, Optional[GGUFValueType]]]:
    """The `tokenizer.*` metadata of a GGUF: value, type, item type (read once: the reader takes seconds)."""
    found = {}
    for name, field in GGUFReader(gguf).fields.items():
        if name.startswith("tokenizer."):
            value_type = GGUFValueType(field.types[0])
            sub_type = GGUFValueType(field.types[1]) if value_type == GGUFValueType.ARRAY else None
            found[name] = (field.contents(), value_type, sub_type)
    return found


def _gguf_bytes(shape: Shape, qtype: GGMLQuantizationType, n_vocab: int) -> int:
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    kv = shape.n_head_kv * (shape.n_embd // shape.n_head)
    per_layer = 2 * shape.n_embd * shape.n_embd + 2 * kv * shape.n_embd + 3 * shape.n_ff * shape.n_embd
    return (n_vocab * shape.n_embd + shape.n_layer * per_layer) // block * block_bytes


def _room_for(size: int, where: Path) -> str:
    """Why a base of `size` bytes cannot be measured here, or "" when it can."""
    disk = shutil.disk_usage(where).free
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    if disk < 3 * size + (2 << 30):
        return f"needs {3 * size / 1e9:.1f} GB of disk (GGUF, bundle, store), {disk / 1e9:.1f} GB free"
    if available < 2 * size + (2 << 30):
        return f"needs {2 * size / 1e9:.1f} GB of memory (ours and the reference), {available / 1e9:.1f} GB available"
    return ""


def scale_rows(bases: list[str], rounds: int, n_tokens: int) -> list[tuple]:
    """Import, `base use`, cold start, decode, peak RSS, verify and erase of each base, smallest first."""
    from bench import _appliance_home, _gemma

    rows: list[tuple] = []
    exe = llama_bench()
    pin = embedded_pin()
    for name in bases:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
            tmp = Path(tmp_name)
            if name == "smollm2":
                gguf = pin.path
            elif name == "gemma":
                gguf = _gemma(tmp)
            else:
                size_name, quant = name.split("-")
                qtype, shape = QUANT[quant], SHAPES[size_name]
                n_vocab = len(_tokenizer(pin.path)["tokenizer.ggml.tokens"][0])
                why_not = _room_for(_gguf_bytes(shape, qtype, n_vocab), tmp)
                if why_not:
                    rows.append((f"{name}: skipped, {why_not}", "skipped", "", ""))
                    continue
                gguf = tmp / f"llama-{name}.gguf"
                write_llama(gguf, shape, qtype, pin.path)
            rows += _one_base(name, gguf, tmp, exe, rounds, n_tokens, _appliance_home)
    return rows


def _one_base(name: str, gguf: Path, tmp: Path, exe: Path, rounds: int, n_tokens: int, appliance_home) -> list[tuple]:
    from bench import PASSPHRASE, PROMPT, median_of, openssl_sha256_rate, timed_import

    item = f"scale-{name.lower()}"
    size = gguf.stat().st_size
    label = f"{name} ({size / 2**30:.2f} GiB)"
    template, gnupg, fprs = appliance_home(tmp)
    try:
        bundle = tmp / "base.bundle"
        create_bundle(bundle, kind="base-model", name=item, version=1, artifacts=[gguf])
        for fpr in fprs:
            sign_bundle(bundle, fpr, gnupg)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], capture_output=True)
        shutil.rmtree(gnupg, ignore_errors=True)
    home = tmp / "home"
    uses: list[float] = []
    ours_import = partial(timed_import, template, home, bundle, item, uses)
    imports = median_of(rounds, {"ours": ours_import, "openssl": lambda: openssl_sha256_rate(bundle, bundle.stat().st_size)})
    bundle.unlink()
    threads = free_threads()
    vault = Vault.unlock(home, PASSPHRASE)
    try:
        model = active_model(vault)
        runtime = Runtime(model, n_ctx=N_CTX, n_threads=threads)
        prompt = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": PROMPT}]))

        def decode_ours() -> float:
            runtime.decoder.reset()
            stop = threading.Event()  # a stop event, as every reply has (the kill-switch's)
            reply = Session(runtime, settings=GREEDY).generate(PROMPT, max_tokens=n_tokens, cancel=stop)
            return len(reply.tokens) / reply.seconds

        decode = median_of(rounds, {"native": lambda: _native(exe, gguf, threads, 0, n_tokens), "ours": decode_ours})
        runtime.close()
        close_model(model)

        def cold_ours() -> float:
            t = time.perf_counter()
            model = active_model(vault)  # decrypt into a sealed memfd, authenticated by its tags
            rt = Runtime(model, n_ctx=N_CTX, n_threads=threads)
            Session(rt, settings=GREEDY).generate(PROMPT, max_tokens=1)
            dt = time.perf_counter() - t
            rt.close()
            close_model(model)
            return dt

        def cold_theirs() -> float:
            t = time.perf_counter()
            llm = reference_llama(gguf, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads)
            llm.create_completion(prompt, max_tokens=1, temperature=0.0)
            dt = time.perf_counter() - t
            llm.close()
            return dt

        cold = median_of(rounds, {"ours": cold_ours, "theirs": cold_theirs})

        def verify() -> float:  # `appliance verify`: the active base, then every installed version
            t = time.perf_counter()
            close_model(active_model(vault))
            faults = [fault for _, fault in verify_installed(active_base(vault), vault) if fault]
            if faults:
                raise RuntimeError(faults[0])
            return time.perf_counter() - t

        verify_s = median_of(rounds, {"verify": verify})["verify"]
        need = runtime_need(gguf_shape(gguf), size, ASK_CTX, ASK_SEQUENCES, N_BATCH)
        peak = _peak_rss_mib(*_ask(home, tmp, PASSPHRASE, PROMPT, n_tokens)) * 2**20
        t = time.perf_counter()
        erase_item(vault, "base-model", item)
        erase_ms = (time.perf_counter() - t) * 1e3
    finally:
        vault.zeroize()
    return [
        (f"{label}: import MB/s, ours (verify + encrypt + probe) / openssl sha256", f"{imports['ours'] / 1e6:.0f}",
         f"{imports['ours'] / imports['openssl']:.3f}", "reported"),
        (f"{label}: base use (decrypt + hash + journal + commit), s", f"{statistics.median(uses):.2f}", "", "reported"),
        (f"{label}: cold start to first token, ours from the store / llama-cpp-python on the plaintext, ms",
         f"{cold['ours'] * 1e3:.0f}", f"{cold['ours'] / cold['theirs']:.3f}", "<= 1.15"),
        (f"{label}: decode tok/s, ours / native llama-bench tg{n_tokens}, {threads} threads", f"{decode['ours']:.1f}",
         f"{decode['ours'] / decode['native']:.3f}", ">= 0.97"),
        (f"{label}: peak RSS of `appliance ask`, MiB / need ({need.text()})", f"{peak / 2**20:.0f}",
         f"{peak / need.total:.3f}", "<= 1.0"),
        (f"{label}: verify (active base + every installed version), s", f"{verify_s:.2f}", "", "reported"),
        (f"{label}: erase base, ms", f"{erase_ms:.0f}", "", "reported"),
    ]  # fmt: skip


def _ask(home: Path, tmp: Path, passphrase: bytes, prompt: str, n_tokens: int) -> tuple[list[str], dict]:
    """`appliance ask` on `home`'s active base, in a child process: its argv and environment."""
    secret = tmp / "passphrase"
    secret.write_bytes(passphrase)
    secret.chmod(0o600)
    env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(secret)}
    return [sys.executable, "-m", "appliance", "ask", "--max-tokens", str(n_tokens), prompt], env
