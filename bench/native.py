"""The native anchor: llama.cpp's own `llama-bench`, no Python at all, next to ours and `create_completion`.

`llama-bench` is built once (cached in bench/.build/, ignored by git) from the llama.cpp source that the
pinned llama-cpp-python sdist vendors, with that package's own build choices on Linux (shared libraries,
OpenMP, -march=native, CPU only). Each contender runs once per round, in turn, and the medians are
compared, so a noisy machine slows every side alike. Runs as `./run bench --only native`.

Both sides run with flash attention off and without the CPU's repacked weight layouts, as our context
does (`appliance/runtime/llama.py`, FLASH_ATTENTION and `use_extra_bufts`); one extra row shows native decode with flash attention on.
Every llama-cpp-python reference, the peak-RSS child's too, loads through `reference_llama`: our model
parameters, so no reference takes the AMX repacking path that ends a process where the kernel does not
grant the tile state. The peak-RSS rows are a measurement of their own (`peak_rss_rows`).
"""

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

from load import free_threads

from appliance import state
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.llama import reference_llama
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.vault import Vault

BUILD = Path(__file__).resolve().parent / ".build"
N_CTX = 2048


def llama_bench(cuda: bool = False) -> Path:
    """The `llama-bench` binary of the vendored llama.cpp, built on first use (`cuda`: with the CUDA backend, for sm_90)."""
    release = version("llama-cpp-python")
    build = BUILD / f"llama.cpp-{release}{'-cuda' if cuda else ''}"
    exe = build / "bin" / "llama-bench"
    if exe.exists():
        return exe
    BUILD.mkdir(exist_ok=True)
    sdist = BUILD / f"llama_cpp_python-{release}.tar.gz"
    if not sdist.exists():
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"llama-cpp-python=={release}", "-d", str(BUILD)], check=True)
    source = BUILD / f"src-{release}"
    if not source.exists():
        prefix = f"llama_cpp_python-{release}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(source, members=members, filter="data")
    print(f"building llama-bench from {sdist.name} (once; minutes on two cores)...", file=sys.stderr)
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    flags += ["-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"]
    flags += ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_FA=OFF"] if cuda else []
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True, capture_output=True)
    jobs = str(os.cpu_count() or 1)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "-j", jobs], check=True, capture_output=True)
    return exe


def _native(exe: Path, model_path: Path, threads: int, prompt: int, generate: int, flash: bool = False) -> float:
    """Tokens per second of one llama-bench repetition (prompt processing if `generate` is 0, else generation)."""
    out = subprocess.run(
        [str(exe), "-m", str(model_path), "-p", str(prompt), "-n", str(generate), "-t", str(threads), "-r", "1"]
        + ["-fa", "1" if flash else "0", "--repack", "0", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out)[0]["avg_ts"])


# A child's ru_maxrss starts at the resident size of the process it was forked (or vforked) from, so a
# large bench process would count itself in every command it measures: a small launcher starts the command.
_LAUNCHER = (
    "import os, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True); "
    "os.kill(os.getpid(), -done.returncode) if done.returncode < 0 else sys.exit(done.returncode)"
)


def _peak_rss_mib(argv: list[str], env: dict) -> float:
    """The peak resident memory of one child process, in MiB."""
    launcher = [sys.executable, "-c", _LAUNCHER, *argv]
    done = subprocess.run(launcher, env=env, capture_output=True, text=True)
    code = done.returncode
    if code != 0:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise RuntimeError(f"{argv[:3]} {how}: {done.stderr[-500:]}")
    return int(done.stdout) / 1024  # KiB on Linux


def peak_rss_rows(model_path: Path, prompt: str, n_tokens: int) -> list[tuple]:
    """Peak RSS of one `appliance ask` against one llama-cpp-python process answering the same prompt."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        state.initialise(home)
        Vault.create(home, b"bench passphrase").zeroize()
        secret = Path(tmp) / "passphrase"
        secret.write_bytes(b"bench passphrase")
        secret.chmod(0o600)
        env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(secret)}
        ask = [sys.executable, "-m", "appliance", "ask", "--max-tokens", str(n_tokens), prompt]
        theirs = [sys.executable, "-c"]
        theirs += [
            "from pathlib import Path; from appliance.runtime.llama import reference_llama; "
            f"llm = reference_llama(Path({str(model_path)!r}), n_ctx={N_CTX}); "
            f"llm.create_chat_completion([{{'role': 'user', 'content': {prompt!r}}}], max_tokens={n_tokens}, temperature=0.0)"
        ]
        ours_mib, theirs_mib = _peak_rss_mib(ask, env), _peak_rss_mib(theirs, env)
    return [
        ("peak RSS of one chat answer, llama-cpp-python process, MiB", f"{theirs_mib:.0f}", "", ""),
        ("peak RSS of one `appliance ask`, MiB", f"{ours_mib:.0f}", f"{ours_mib / theirs_mib:.3f}", "reported"),
    ]


def native_rows(model, rounds: int, n_tokens: int, prompt: str, median_of) -> list[tuple]:
    """Decode and 512-token prompt processing: native llama.cpp, ours (overlay off and on), `create_completion`."""
    exe = llama_bench()
    threads = free_threads()
    runtime = Runtime(model, n_ctx=N_CTX, n_threads=threads)
    reference = reference_llama(model.path, n_ctx=N_CTX, n_threads=threads)
    overlay = Overlay(OverlayParams.random(runtime.engine.n_embd, seed=1), model.sha256)
    chat_prompt = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": prompt}]))
    long_text = " ".join(["A field radio needs a clean antenna connection and a log of every frequency used."] * 40)
    _ = runtime.embeddings  # the table is loaded outside the timed region, as a running chat would have it

    def ours_decode(on: bool):
        def run():
            runtime.decoder.reset()
            session = Session.switched_on(runtime, overlay if on else None, settings=GREEDY)
            reply = session.generate(prompt, max_tokens=n_tokens, cancel=threading.Event())  # a stop event, as every reply has
            return len(reply.tokens) / reply.seconds

        return run

    def theirs_decode():
        reference.reset()
        t = time.perf_counter()
        out = reference.create_completion(chat_prompt, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - t)

    def ours_prefill(on: bool):
        def run():
            runtime.decoder.reset()
            reply = Session.switched_on(runtime, overlay if on else None, settings=GREEDY).generate(long_text, max_tokens=1)
            return reply.prefill_tokens / reply.prefill_seconds

        return run

    pp_tokens = runtime.engine.tokenize(long_text)[:512]

    def theirs_prefill():
        reference.reset()
        t = time.perf_counter()
        reference.eval(pp_tokens)
        return len(pp_tokens) / (time.perf_counter() - t)

    tg = median_of(
        rounds,
        {
            "native": lambda: _native(exe, model.path, threads, 0, n_tokens),
            "native_fa": lambda: _native(exe, model.path, threads, 0, n_tokens, flash=True),
            "off": ours_decode(False),
            "on": ours_decode(True),
            "cc": theirs_decode,
        },
    )
    pp = median_of(
        rounds,
        {
            "native": lambda: _native(exe, model.path, threads, 512, 0),
            "off": ours_prefill(False),
            "on": ours_prefill(True),
            "cc": theirs_prefill,
        },
    )
    runtime.close()
    reference.close()
    n = tg["native"]
    rows = [
        (f"decode tok/s, native llama-bench tg{n_tokens}, {threads} threads", f"{n:.1f}", "", ""),
        ("decode tok/s, native llama-bench, flash attention on", f"{tg['native_fa']:.1f}", f"{tg['native_fa'] / n:.3f}", ""),
        ("decode tok/s, ours, overlay off (ratio to native)", f"{tg['off']:.1f}", f"{tg['off'] / n:.3f}", ">= 0.97"),
        ("decode tok/s, ours, overlay on (ratio to native)", f"{tg['on']:.1f}", f"{tg['on'] / n:.3f}", ">= 0.95"),
        ("decode tok/s, create_completion (ratio to native)", f"{tg['cc']:.1f}", f"{tg['cc'] / n:.3f}", "reported"),
        ("decode tok/s, ours overlay off / create_completion", f"{tg['off']:.1f}", f"{tg['off'] / tg['cc']:.3f}", ">= 1.05"),
        ("prefill tok/s, native llama-bench pp512", f"{pp['native']:.0f}", "", ""),
        ("prefill tok/s, ours, token path (ratio to native)", f"{pp['off']:.0f}", f"{pp['off'] / pp['native']:.3f}", "reported"),
        (
            "prefill tok/s, ours, embedding path, overlay on (ratio to native)",
            f"{pp['on']:.0f}",
            f"{pp['on'] / pp['native']:.3f}",
            ">= 0.9",
        ),
        (
            "prefill tok/s, create_completion eval (ratio to native)",
            f"{pp['cc']:.0f}",
            f"{pp['cc'] / pp['native']:.3f}",
            "reported",
        ),
    ]
    return rows
