"""The `image` section of the bench: what image/build measured (read from its cache, never rebuilt
here) and decode speed of the portable llama.cpp build against the native one.

Build rows come from image/cache/: `out/build-info.json` (layout size, step times of the last build)
and the one-off times of the cached steps (`base.seconds`, `llama/compile.seconds`). Decode runs
the project's own greedy loop on the embedded model in a fresh process per measurement, with
llama-cpp-python's libraries from its install (native: `-march=native`) or from the cached portable
wheel (LLAMA_CPP_LIB_PATH: every CPU variant, the best chosen at run time), interleaved round by round.
"""

import json
import os
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / "image" / "cache"
MEASURE = """
import os, sys, time
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.trust.builtin import embedded_pin, verify_pinned
rt = Runtime(verify_pinned(embedded_pin()), n_ctx=2048, n_threads=os.cpu_count())
session = Session(rt, settings=GREEDY)
t = time.perf_counter()
reply = session.generate(sys.argv[1], max_tokens=int(sys.argv[2]))
rate = len(reply.tokens) / (time.perf_counter() - t)
variant = sorted({line.split("/")[-1].strip() for line in open("/proc/self/maps") if "libggml-cpu" in line})
print(rate, ",".join(variant) or "linked in")
"""


def _seconds(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else "not measured"


def build_rows() -> list[tuple]:
    info_path = CACHE / "out" / "build-info.json"
    if not info_path.is_file():
        return [("image: no cached build (run image/build)", "", "", "reported")]
    info = json.loads(info_path.read_text())
    s = info["seconds"]
    rebuild = s["appliance_wheel"] + s["image"] + s["export"]
    return [
        ("image: dir: layout size, MB (uncompressed layers)", f"{info['layout_bytes'] / 1e6:.0f}", "", "reported"),
        ("image: build with cached base and wheels, s (wheel, podman build, export)", f"{rebuild}", "", "reported"),
        ("image: base debootstrap + normalise, s (once, cached)", _seconds(CACHE / "base.seconds"), "", "reported"),
        (
            "image: portable llama-cpp-python compile, s (once, cached)",
            _seconds(CACHE / "llama" / "compile.seconds"),
            "",
            "reported",
        ),
        _cuda_variant_row(info["layout_bytes"]),
    ]


def _cuda_variant_row(cpu_layout_bytes: int) -> tuple:
    """The CUDA variant (image/build --cuda): its size beside the CPU image's."""
    info_path = CACHE / "out-cuda" / "build-info.json"
    name = "image: CUDA variant layout size, MB (x the CPU image)"
    if not info_path.is_file():
        return (name, "not built (image/cuda-module, then image/build --cuda)", "", "reported")
    size = json.loads(info_path.read_text())["layout_bytes"]
    return (name, f"{size / 1e6:.0f}", f"{size / cpu_layout_bytes:.2f}", "reported")


def _portable_lib() -> Path | None:
    """The cached portable wheel's llama_cpp/lib, unpacked once beside it."""
    wheels = sorted((CACHE / "llama").glob("llama_cpp_python-*.whl"))
    if not wheels:
        return None
    lib = CACHE / "llama" / "lib"
    if not (lib / "libllama.so").exists():
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith("llama_cpp/lib/") and not name.endswith("/"):
                    lib.mkdir(parents=True, exist_ok=True)
                    (lib / Path(name).name).write_bytes(z.read(name))
    return lib


def _decode(lib: Path | None, prompt: str, n_tokens: int) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    if lib is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, prompt, str(n_tokens)], env=env, capture_output=True, text=True, check=True
    )
    rate, variant = out.stdout.split()
    return float(rate), variant


def decode_rows(prompt: str, rounds: int, n_tokens: int) -> list[tuple]:
    lib = _portable_lib()
    if lib is None:
        return [("image: no cached portable llama-cpp-python wheel (run image/build)", "", "", "reported")]
    native, portable, variant = [], [], ""
    for _ in range(rounds):
        native.append(_decode(None, prompt, n_tokens)[0])
        rate, variant = _decode(lib, prompt, n_tokens)
        portable.append(rate)
    n, p = statistics.median(native), statistics.median(portable)
    return [
        ("image: decode tok/s, native llama.cpp build (-march=native)", f"{n:.1f}", "", ""),
        (f"image: decode tok/s, portable build ({variant})", f"{p:.1f}", f"{p / n:.3f}", "reported"),
    ]


def image_rows(prompt: str, rounds: int, n_tokens: int) -> list[tuple]:
    """What image/build measured, from its cache, and decode of the portable llama.cpp build against the native one."""
    return build_rows() + decode_rows(prompt, rounds, n_tokens)
