"""Whether a base fits the memory cap this process runs under, decided before llama.cpp loads it.

Under a memory cap (a cgroup's `memory.max`, as `systemd-run -p MemoryMax=` sets it; `memory.limit_in_bytes`
on cgroup v1), a base that cannot fit would be killed by the kernel part-way through loading or at
the first long reply; it is refused first instead (`NotEnoughMemory`, exit 3), with a line naming what
it needs and what the cap leaves. Without a cap nothing is refused: the kernel's free-memory figure
moves with the page cache and swap, and is no promise either way.

What a base needs, resident once a reply has touched every weight (docs/procedures.md, "Memory"):

    the GGUF's bytes        an imported base's memfd, or the embedded file's page cache (mapped, and
                            locked as touched where `mlockall` holds: hardening.py)
  + the KV cache            sequences x n_ctx x n_layer x (K + V width) x 2 bytes (f16)
  + the compute buffer      4 bytes x n_batch x the widest of: logits (n_vocab), attention scores
                            (n_head x n_ctx), the feed-forward (n_ff); what llama.cpp's allocator reserves
  + 15 %                    llama.cpp's other buffers, Python, the libraries

An imported base is checked twice: its GGUF's size before it is decrypted into memory (`store.bases`),
and all of it, from the GGUF header's shape, before llama.cpp loads it (`Runtime`). That shape is read
from the header once, at import, and kept in the version's sealed accepted record (`GgufShape`); a start
reads it from there, and walks the header (`gguf_shape`) only for a base whose record predates it.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import Refused
from ..trust.builtin import GgufShape
from .embeddings import EmbeddingTable

MARGIN = 1.15
NO_LIMIT = 1 << 62  # cgroup v1 says "no limit" with a number near 2**63


class NotEnoughMemory(Refused):
    """The memory cap this process runs under (a cgroup's memory.max) leaves less than the base needs: nothing was loaded."""


@dataclass(frozen=True)
class Cap:
    """The tightest memory limit over this process's cgroup and its ancestors."""

    limit: int
    used: int
    where: Path  # the cgroup directory that sets it

    @property
    def free(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass(frozen=True)
class Need:
    weights: int  # bytes of the GGUF still to come into memory (0 once an imported base is in its memfd)
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return int((self.weights + self.kv_cache + self.compute) * MARGIN)

    def text(self) -> str:
        parts = [("weights", self.weights), ("KV cache", self.kv_cache), ("compute", self.compute)]
        return f"{_mib(self.total)} MiB (" + ", ".join(f"{what} {_mib(n)}" for what, n in parts if n) + ", + 15 %)"


def gguf_shape(gguf_path: Path) -> GgufShape:
    """What sizing a start needs from this GGUF, from its header alone (nothing is loaded)."""
    table = EmbeddingTable(gguf_path)
    try:
        numbers, n_embd, n_vocab, n_layer = table.numbers, table.n_embd, table.n_vocab, table.n_layer or 0
    finally:
        table.close()
    n_head = numbers.get("attention.head_count") or 1
    n_head_kv = numbers.get("attention.head_count_kv") or n_head
    k_width = n_head_kv * (numbers.get("attention.key_length") or n_embd // n_head)
    v_width = n_head_kv * (numbers.get("attention.value_length") or n_embd // n_head)
    n_ff = numbers.get("feed_forward_length") or 4 * n_embd
    return GgufShape(n_vocab, n_embd, n_layer, n_head, k_width, v_width, n_ff)


def runtime_need(shape: GgufShape, weights: int, n_ctx: int, sequences: int, n_batch: int) -> Need:
    """What llama.cpp will hold for a GGUF of this shape."""
    kv_cache = sequences * n_ctx * shape.n_layer * (shape.k_width + shape.v_width) * 2
    compute = 4 * n_batch * max(shape.n_vocab, shape.n_head * n_ctx, shape.n_ff)
    return Need(weights, kv_cache, compute)


def require_room(what: str, need: Need, cap: Optional["Cap"] = None) -> None:
    """Refuse (`NotEnoughMemory`) when the memory cap leaves less than `need`; `cap` defaults to this process's."""
    cap = cap if cap is not None else memory_cap()
    if cap is not None and need.total > cap.free:
        raise NotEnoughMemory(
            f"{what} needs {need.text()} of memory; the memory cap leaves {_mib(cap.free)} MiB"
            f" ({_mib(cap.limit)} MiB limit, {_mib(cap.used)} in use, cgroup {cap.where}): nothing was loaded"
        )


def memory_cap(proc: Path = Path("/proc/self")) -> Optional[Cap]:
    """The tightest cgroup memory limit over this process's cgroups (v2 and v1) and their ancestors; None if none."""
    caps = []
    for mount, directory, (limit_file, used_file) in _cgroup_dirs(proc):
        for level in (directory, *[p for p in directory.parents if p.is_relative_to(mount)]):
            limit, used = _read_number(level / limit_file), _read_number(level / used_file)
            if limit is not None and used is not None and limit < NO_LIMIT:
                caps.append(Cap(limit, used, level))
    return min(caps, key=lambda cap: cap.free, default=None)


def _cgroup_dirs(proc: Path) -> list[tuple[Path, Path, tuple[str, str]]]:
    """This process's memory cgroups: (the hierarchy's mount point, the cgroup's directory, its limit and usage files)."""
    try:
        groups = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in groups:
        _, controllers, path = line.split(":", 2)
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        for mount in mounts:
            fields = mount.split()
            fstype = fields[fields.index("-") + 1]
            if (v2 and fstype == "cgroup2") or (not v2 and fstype == "cgroup" and "memory" in fields[-1].split(",")):
                root, point = fields[3], Path(fields[4])
                files = ("memory.max", "memory.current") if v2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
                found.append((point, point / os.path.relpath(path, root), files))
    return found


def _read_number(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return NO_LIMIT
    return int(text) if text.isdigit() else None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f}"
