"""Helpers the tests import: the real CLI in a subprocess, and a whole-tree snapshot."""

import os
import subprocess
import sys
from pathlib import Path


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


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes and mode: equal before and after means nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        out[rel] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
    return out
