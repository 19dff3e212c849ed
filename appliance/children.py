"""Every process the appliance starts, started one way: nothing of where or how the operator ran it reaches in.

A child would otherwise inherit the operator's current directory (a USB stick's folder, say), the
whole environment (`PYTHONPATH`, `PYTHONSTARTUP`, `LD_PRELOAD`, ...) and, if it is Python, a module
search path that begins with that directory: a `struct.py` lying there would run as the appliance's
user. So every child

1. starts in `/` (or the directory the caller names), never where the command was run from;
2. gets a minimal environment: the variables the caller names from ours (`keep`) and the values
   it gives (`extra`), nothing else;
3. inherits no file descriptor but stdin, stdout, stderr and those passed (`pass_fds`);
4. if it is Python, runs isolated (`python -I`: no `PYTHON*` variables, no user site directory,
   neither the current nor the script's directory on `sys.path`), so it imports only the
   installed code.

Paths handed to a child are absolute (rule 1 moves it away from any relative base).
"""

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# What a program run in the operator's terminal needs to draw and to find its own settings.
TERMINAL = ("PATH", "HOME", "USER", "LOGNAME", "TERM", "COLORTERM", "TERMINFO", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE")


def python(*args: str) -> list[str]:
    """Rule 4: the command line of this interpreter, isolated, with ARGS."""
    return [sys.executable, "-I", *args]


def environment(keep: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Rule 2: our values of the variables in `keep` (those we have), plus `extra`."""
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(extra or {})
    return env


def run(
    argv: list[str], *, keep: Iterable[str] = (), extra: Mapping[str, str] | None = None, cwd: str = "/", **kwargs: Any
) -> subprocess.CompletedProcess:
    """`subprocess.run` under rules 1-3 (`pass_fds` and the rest of its arguments as they are)."""
    return subprocess.run(argv, cwd=cwd, env=environment(keep, extra), close_fds=True, **kwargs)


def popen(
    argv: list[str], *, keep: Iterable[str] = (), extra: Mapping[str, str] | None = None, cwd: str = "/", **kwargs: Any
) -> subprocess.Popen:
    """`subprocess.Popen` under rules 1-3."""
    return subprocess.Popen(argv, cwd=cwd, env=environment(keep, extra), close_fds=True, **kwargs)
