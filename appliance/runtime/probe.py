"""Will this GGUF run? Asked of a child process, so llama.cpp's C parser never meets hostile bytes in ours.

`probe_gguf(fd, size)` hands the file to `python -m appliance.runtime.probe` as an inherited file
descriptor (a sealed memfd: no plaintext file on disk) under limits: wall time, address space
(RLIMIT_AS), CPU time, no core dump (RLIMIT_CORE 0). The child checks, in this order, and stops
at the first fault:

1. the header: magic `GGUF`, version 2 or 3, tensor and key counts that the file's size can hold;
2. the metadata, walked with a bounds check at every read: `general.architecture`, the vocabulary
   (`tokenizer.ggml.tokens`), a `token_embd.weight` tensor, every tensor's data inside the file;
3. the real load: llama.cpp opens the model (an architecture it does not know fails here), agrees
   with the metadata on vocabulary and hidden size (`<arch>.embedding_length`), and decodes one
   token in a small context;
4. the chat template: the GGUF's own, rendered once in the sandbox (`chat_template`); a template
   that reaches for Python internals fails there. Without one, llama.cpp must have a built-in
   template for the architecture.

The child answers one JSON line: the facts, or {"refused": reason}. A crash, a signal, a limit hit
or a time-out is a refusal too (`GgufRejected`, exit 3) naming what happened; nothing the child
does can change the caller's state.
"""

import json
import os
import resource
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import Refused

PROBE_SECONDS = 120
MIN_ADDRESS_SPACE = 4 << 30  # Python, numpy, llama.cpp and their thread stacks, before the model
HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata key count
MIN_TENSOR_INFO = 8 + 1 + 4 + 8 + 4 + 8  # name length, a 1-byte name, n_dims, one dim, type, offset
MIN_KV = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value


class GgufRejected(Refused):
    """A base model's GGUF failed the import probe: malformed, unknown to llama.cpp, or the probe died."""


@dataclass(frozen=True)
class GgufFacts:
    architecture: str
    n_vocab: int
    n_embd: int
    chat_template: str  # "gguf" (its own, checked in the sandbox) or the llama.cpp built-in's name


def probe_gguf(fd: int, size: int, label: str) -> GgufFacts:
    """Rules 1-4 in a limited child; `label` names the file in the refusal."""
    limit = max(MIN_ADDRESS_SPACE, 3 * size + MIN_ADDRESS_SPACE)

    def limits() -> None:  # runs in the child, before exec
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (PROBE_SECONDS, PROBE_SECONDS))

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "HOME", "LANG", "LC_ALL")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "appliance.runtime.probe", str(fd), str(size)],
            pass_fds=(fd,),
            preexec_fn=limits,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise GgufRejected(f"{label}: the GGUF probe did not finish within {PROBE_SECONDS} s") from None
    answer = _answer(r.stdout)
    if r.returncode < 0:
        name = signal.Signals(-r.returncode).name
        raise GgufRejected(f"{label}: the GGUF probe died of {name} (malformed file, or over its memory or time limit)")
    if answer is None:
        tail = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GgufRejected(f"{label}: the GGUF probe failed (exit {r.returncode}): {tail[-1][:200] if tail else 'no output'}")
    if "refused" in answer or r.returncode != 0:
        raise GgufRejected(f"{label}: {answer.get('refused', f'the GGUF probe failed (exit {r.returncode})')}")
    return GgufFacts(answer["architecture"], answer["n_vocab"], answer["n_embd"], answer["chat_template"])


def _answer(stdout: bytes) -> Optional[dict]:
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


# -- the child -------------------------------------------------------------------------------


class _Fault(Exception):
    pass


def _header(path: str, size: int) -> None:
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise _Fault(f"not a GGUF file: {size} bytes, shorter than a GGUF header")
    magic, version, n_tensors, n_kv = HEADER.unpack(head)
    if magic != b"GGUF":
        raise _Fault(f"not a GGUF file (magic {magic!r})")
    if version not in (2, 3):
        raise _Fault(f"GGUF version {version} is not supported (2 or 3)")
    if n_tensors * MIN_TENSOR_INFO + n_kv * MIN_KV > size - HEADER.size:
        raise _Fault(f"GGUF header claims {n_tensors} tensors and {n_kv} metadata keys, more than {size} bytes can hold")


SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
WANTED = ("general.architecture", "general.alignment", "tokenizer.chat_template")


class _Cursor:
    """Reads a GGUF front to back; every read is checked against the end of the file."""

    def __init__(self, data, size: int):
        self.data, self.size, self.pos = data, size, HEADER.size

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Fault(f"truncated GGUF: the metadata runs past the end of the file at byte {self.pos}")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += n
        return value

    def string(self, keep: bool = True) -> str:
        n = self.take("<Q")
        if self.pos + n > self.size:
            raise _Fault(f"truncated GGUF: a string runs past the end of the file at byte {self.pos}")
        text = bytes(self.data[self.pos : self.pos + n]).decode("utf-8", "replace") if keep else ""
        self.pos += n
        return text

    def value(self, kind: int, keep: bool):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string(keep)
        if kind != ARRAY:
            raise _Fault(f"malformed GGUF: unknown metadata value type {kind}")
        inner, n = self.take("<I"), self.take("<Q")
        if inner in SCALARS:  # skipped whole, after a bounds check
            width = struct.calcsize(SCALARS[inner])
            if self.pos + n * width > self.size:
                raise _Fault(f"truncated GGUF: an array runs past the end of the file at byte {self.pos}")
            self.pos += n * width
        elif inner == STRING:
            if n > (self.size - self.pos) // 8:
                raise _Fault(f"malformed GGUF: an array of {n} strings cannot fit in the file")
            for _ in range(n):
                self.string(keep=False)
        else:
            raise _Fault(f"malformed GGUF: an array of value type {inner}")
        return n


def _metadata(path: str, size: int) -> tuple[str, int, Optional[int], Optional[str]]:
    """Architecture, vocabulary size, hidden size (None if the key is absent) and chat template, as the
    metadata says; every tensor's data must lie inside the file. A plain walk of the format: the `gguf`
    package's reader decodes every vocabulary string into Python objects (15 s for Gemma's 262k)."""
    import mmap

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data, size)
        _, _, n_tensors, n_kv = HEADER.unpack_from(data, 0)
        found: dict = {}
        n_vocab = n_embd = None
        for _ in range(n_kv):
            key = cur.string()
            kind = cur.take("<I")
            value = cur.value(kind, keep=key in WANTED or key.endswith(".embedding_length"))
            if key in WANTED or key.endswith(".embedding_length"):
                found[key] = value
            if key == "tokenizer.ggml.tokens" and kind == ARRAY:
                n_vocab = value
        arch = found.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise _Fault("no general.architecture in the GGUF metadata")
        if not n_vocab:
            raise _Fault("no vocabulary (tokenizer.ggml.tokens) in the GGUF metadata")
        tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.take("<I")
            if not 1 <= n_dims <= 4:
                raise _Fault(f"malformed GGUF: tensor {name[:64]!r} has {n_dims} dimensions")
            dims = [cur.take("<Q") for _ in range(n_dims)]
            ggml_type, offset = cur.take("<I"), cur.take("<Q")
            tensors.append((name, dims, ggml_type, offset))
        alignment = found.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            raise _Fault("malformed GGUF: general.alignment is not a positive integer")
        start = -(-cur.pos // alignment) * alignment
        for name, dims, ggml_type, offset in tensors:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise _Fault(f"malformed GGUF: tensor {name[:64]!r} has unknown type {ggml_type}") from None
            elements = 1
            for d in dims:
                elements *= d
            if start + offset + elements // block * type_size > size:
                raise _Fault(f"truncated GGUF: tensor {name[:64]!r} ends past the end of the file")
        if "token_embd.weight" not in {t[0] for t in tensors}:
            raise _Fault("no token_embd.weight tensor")
        n_embd = found.get(f"{arch}.embedding_length")
        template = found.get("tokenizer.chat_template")
    return arch, n_vocab, n_embd if isinstance(n_embd, int) else None, template if isinstance(template, str) else None


def _load(path: str, arch: str, n_vocab: int, n_embd: Optional[int]) -> int:
    """The real load; returns the hidden size llama.cpp reads (it must equal the metadata's)."""
    import numpy as np

    from .llama import LlamaEngine

    try:
        engine = LlamaEngine(Path(path), n_ctx=32, n_batch=32, n_threads=1)
    except Exception:
        raise _Fault(f"the bundled llama.cpp cannot load this model (architecture {arch!r})") from None
    try:
        if n_embd is None:
            raise _Fault(f"no hidden size ({arch}.embedding_length) in the GGUF metadata")
        if (engine.n_vocab, engine.n_embd) != (n_vocab, n_embd):
            raise _Fault(
                f"llama.cpp reads vocabulary {engine.n_vocab} and hidden size {engine.n_embd}, the metadata says {n_vocab} and {n_embd}"
            )
        engine.decode_tokens([engine.tokenize("Hello", special=False)[0]], 0)
        if not np.isfinite(engine.last_logits()).all():
            raise _Fault("llama.cpp computed logits that are not finite")
        return engine.n_embd
    finally:
        engine.close()


def _template(arch: str, source: Optional[str]) -> str:
    from .chat_template import ChatTemplate, builtin_template_for

    sample = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
              {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Why?"}]  # fmt: skip
    if source:
        try:
            ChatTemplate(source).render(sample)
        except Refused as e:
            raise _Fault(str(e)) from None
        return "gguf"
    name = builtin_template_for(arch)
    if name is None:
        raise _Fault(f"no chat template in the GGUF, and llama.cpp has none built in for architecture {arch!r}")
    return name


def _probe(fd: int, size: int) -> dict:
    path = f"/proc/self/fd/{fd}"
    if os.fstat(fd).st_size != size:
        raise _Fault(f"the file holds {os.fstat(fd).st_size} bytes, not {size}")
    _header(path, size)
    arch, n_vocab, n_embd_key, source = _metadata(path, size)
    n_embd = _load(path, arch, n_vocab, n_embd_key)
    template = _template(arch, source)
    return {"architecture": arch, "n_vocab": n_vocab, "n_embd": n_embd, "chat_template": template}


def main(argv: list[str]) -> int:
    try:
        answer = _probe(int(argv[0]), int(argv[1]))
    except _Fault as e:
        answer = {"refused": str(e)}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
