"""Process protections: what a crash, another process of the same user, or swap can read of the secrets.

`harden_process` runs first in the CLI, before any passphrase is read:

1. umask 077: whatever the appliance creates is its user's alone (files 0600, folders 0700).
2. RLIMIT_CORE 0, soft and hard: a crash writes no core file. A core is the whole memory: the
   passphrase, the master key, the data keys in use, decrypted weights, the conversation.
3. PR_SET_DUMPABLE 0: no core through a core_pattern pipe either (systemd-coredump, apport
   ignore RLIMIT_CORE), and no ptrace or /proc/PID/mem by other processes of the same user.
4. Memory locked against swap, in one of two modes:
   - "all": `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, where no memlock limit applies
     (RLIMIT_MEMLOCK unlimited, or CAP_IPC_LOCK). Pages are locked as they are touched, so the
     cost is the resident set being unswappable, no more (measured on `ask` with the embedded
     model: same peak RSS, about 285 MB, no measurable time). Keys are not the only secret:
     decrypted weights, the slot table while it is parsed and the conversation are too. A multi-GB
     base is locked as well, on purpose: its memfd's only backing store is swap (docs/procedures.md,
     "Memory"), and a memory cap, not the lock, keeps a base that does not fit from starting.
   - "keys": under a memlock limit MCL_FUTURE would make the allocation that crosses it fail
     (a model maps hundreds of MB), so only the pages holding key buffers are locked
     (`lock_secret`, best effort within the limit); the rest can reach swap.

`die_with_parent()` is for a child holding a secret of its parent's (the GGUF probe, with the decrypted
base): when `appliance kill` ends the parent with SIGKILL, the kernel ends the child too.

`protections()` reads back what is in force, for `appliance status`. Linux only: elsewhere
each step reports itself off. Python still leaves copies (immutable `bytes`, the `cryptography`
objects, freed memory): see docs/procedures.md, section 9.
"""

import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass

PR_SET_DUMPABLE, PR_GET_DUMPABLE, PR_SET_PDEATHSIG = 4, 3, 1
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
CAP_IPC_LOCK = 14

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_memory_mode = "off"  # "all" once mlockall succeeded, else "keys" or "off" (see the module docstring)
_memory_why = "not hardened"


@dataclass(frozen=True)
class Protections:
    core_dumps_off: bool  # RLIMIT_CORE is 0 (soft and hard)
    not_dumpable: bool  # PR_GET_DUMPABLE is 0
    umask: int
    memory: str  # "all", "keys" or "off"
    memory_why: str

    def summary(self) -> str:
        return ", ".join([
            "core dumps off" if self.core_dumps_off else "core dumps ON",
            "not dumpable" if self.not_dumpable else "DUMPABLE",
            f"umask {self.umask:03o}",
            {"all": "memory locked", "keys": "key memory locked", "off": "memory NOT locked"}[self.memory] + f" ({self.memory_why})",
        ])  # fmt: skip


def harden_process() -> None:
    """Apply the protections of the module docstring to this process; idempotent, never raises.

    A step the sandbox refuses is left off and `protections()` says so (podman refuses setrlimit).
    """
    os.umask(0o077)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        pass
    if _libc is None:
        _set_memory("off", f"not supported on {sys.platform}")
        return
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if _memory_mode != "all":
        _lock_memory(_libc)


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (PR_SET_PDEATHSIG); if it has ended already, exit now."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent went before the request was made: adopted by init
        os._exit(1)


def _lock_memory(libc: ctypes.CDLL) -> None:
    limit = _memlock_limit()
    if limit is None:
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
            _set_memory("all", "mlockall, pages locked as touched")
            return
        why = f"mlockall refused: {os.strerror(ctypes.get_errno())}"
    else:
        why = f"RLIMIT_MEMLOCK {limit >> 10} KiB"
    if lock_secret(bytearray(32)):
        _set_memory("keys", f"{why}: key buffers only")
    else:
        _set_memory("off", f"{why}; mlock refused: {os.strerror(ctypes.get_errno())}")


def _set_memory(mode: str, why: str) -> None:
    global _memory_mode, _memory_why
    _memory_mode, _memory_why = mode, why


def lock_secret(buf: bytearray) -> bool:
    """Lock the pages of `buf` in memory (kept out of swap) unless all memory already is; best effort.

    The pages are never unlocked: they may hold other keys too (locks do not nest), and a few
    pages locked for the life of the process cost nothing. Returns whether they are locked.
    """
    if _memory_mode == "all":
        return True
    if _libc is None or not buf:
        return False
    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    return _libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(len(buf))) == 0


def protections() -> Protections:
    """What is in force in this process, read back from the kernel where it can say."""
    umask = os.umask(0o077)
    os.umask(umask)
    dumpable = _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) if _libc is not None else 1
    return Protections(
        core_dumps_off=resource.getrlimit(resource.RLIMIT_CORE) == (0, 0),
        not_dumpable=dumpable == 0,
        umask=umask,
        memory=_memory_mode,
        memory_why=_memory_why,
    )


def _memlock_limit() -> int | None:
    """None when no memlock limit applies, else the limit in bytes (the soft one raised to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY or _has_capability(CAP_IPC_LOCK):
        return None
    return soft


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            line = next(row for row in f if row.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> bit & 1)
