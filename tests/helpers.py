"""Helpers the tests import: the real CLI in a subprocess, and a whole-tree snapshot."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from appliance.vault import kdf

# The cheapest KDF cost this build has. Tests make their vaults with it (`Vault.create(..., cost=TEST_KDF)`,
# a parameter the appliance never passes) and every later unlock reads it from the vault file; the
# appliance's own cost (about 1 s an unlock) is for real passphrases, and `init` through the CLI uses it.
TEST_KDF = (
    {"name": "argon2id", "iterations": 1, "lanes": 1, "memory_kib": 8}
    if kdf.Argon2id is not None
    else {"name": "scrypt", "n": 2, "r": 1, "p": 1}
)


PASSPHRASE = "correct horse battery staple"  # every test vault's, unless a test is about passphrases


def make_vault_home(home: Path, passphrase: str = PASSPHRASE) -> Path:
    """`home` initialised as `appliance init` leaves it, by the same two steps (`state.initialise`, `Vault.create`),
    with a vault of `TEST_KDF` cost: every later unlock, in process or by the CLI, costs milliseconds. `init`
    itself runs through the CLI only where it is what is tested (tests/vault/test_vault_cli.py and others)."""
    from appliance import state
    from appliance.vault import Vault

    state.initialise(home)
    Vault.create(home, passphrase.encode(), cost=TEST_KDF).zeroize()
    return home


def appliance(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300, prefix: list[str] = ()):
    """Run the real `appliance` command in a subprocess; returns CompletedProcess (text mode)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "appliance", *args],
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, **kw) -> str:
    """`appliance ARGS` that must succeed; its stdout."""
    r = appliance(*args, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


def error_line(r: subprocess.CompletedProcess, exit_code: int, reason: str) -> str:
    """The one `error:` line of a failed command, checked: its exit code, and the reason code it ends with
    (`[threshold-not-met]`, appliance/errors.py), which is what says WHICH failure it was."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == exit_code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert lines[0].endswith(f" [{reason}]"), f"not [{reason}]: {lines[0]}"
    return lines[0]


def refused(home: Path, code: int, reason: str, *args: str, words=(), env: dict | None = None) -> str:
    """`appliance ARGS` refused and nothing changed: exit `code`, one `error:` line ending `[reason]` that names
    each of `words` (any case), and every file under `home` byte-identical; the line. The progress lines a long
    import or verify prints first are set aside."""
    before = tree_digest(home)
    r = appliance(*args, env=env)
    r.stderr = "".join(line for line in r.stderr.splitlines(keepends=True) if not line.startswith(("import: ", "verify: ")))
    line = error_line(r, code, reason)
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} not in {line!r}"
    assert tree_digest(home) == before
    return line


def assert_refused(home: Path, bundle: Path, reason: str, *words: str) -> str:
    """`update import BUNDLE` refused by the rule whose reason code is `reason`, nothing changed (`refused`)."""
    return refused(home, 3, reason, "update", "import", str(bundle), words=words)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes and mode: equal before and after means nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        out[rel] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    return out


def with_file_size_limit(*args: str, fsize: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """`appliance ARGS` where no file it writes may grow past `fsize` bytes (RLIMIT_FSIZE): a disk
    that fills up mid-command, without root tricks. Writes past the limit fail with EFBIG."""
    import resource
    import signal

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        capture_output=True, text=True, timeout=300, preexec_fn=cap,
    )  # fmt: skip


def read_only(directory: Path) -> list[str]:
    """A `prefix` for `appliance()`: the command runs in its own mount namespace in which `directory`
    is a read-only bind mount (EROFS). As root, a mode such as 0500 stops nothing; the namespace and
    its mount end with the command. Needs root (CAP_SYS_ADMIN)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "sh", str(directory)]


def install_demo_overlay(vault) -> tuple[str, list[Path]]:
    """The demo overlay installed by the product's own import, as `init --demo` does it (demo keys made in a
    scratch GnuPG home, a signed bundle, every check of the trust chain): its data key id and its ciphertext files."""
    from appliance.demo.install import DEMO_ITEMS, install_demo
    from appliance.store import ActiveBase
    from appliance.store.layout import Store
    from appliance.trust.builtin import embedded_pin, verify_pinned

    overlay = DEMO_ITEMS[0]
    install_demo(ActiveBase(verify_pinned(embedded_pin())), vault, (overlay,))
    store = Store.unlocked(vault)
    sha = store.read_state().items[overlay.name].active
    assert sha is not None
    return f"overlay/{overlay.name}/{overlay.version}", sorted((store.object_dir(sha) / "artifacts").iterdir())


# The head of a child's `python -c` code: `killing_fsync` counts os.fsync calls and SIGKILLs the process on entry
# to call number argv[1] (0: never); the code that follows puts it in place where the crash points begin.
KILLED_AT_FSYNC = r"""
import os, signal, sys
kill_at, seen, real = int(sys.argv[1]), 0, os.fsync
def killing_fsync(fd):
    global seen
    seen += 1
    if seen == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
"""


def llama_cpp_penalised(logits: np.ndarray, accepted: list[int], last_n: int, penalty: float) -> np.ndarray:
    """The row llama.cpp's own penalties stage leaves (frequency and presence 0), `accepted` gone through its window."""
    import llama_cpp as C  # only the tests that compare with llama.cpp load it

    stage = C.llama_sampler_init_penalties(len(logits), last_n, penalty, 0.0, 0.0)
    try:
        for token in accepted:
            C.llama_sampler_accept(stage, token)
        data = np.zeros(len(logits), dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        data["id"], data["logit"] = np.arange(len(logits)), logits
        cur = C.llama_token_data_array(data.ctypes.data_as(C.llama_token_data_p), len(logits), -1, False)
        C.llama_sampler_apply(stage, ctypes.byref(cur))
        return data["logit"].copy()
    finally:
        C.llama_sampler_free(stage)
