"""ggml's crash handler, on a GGML_ASSERT (a hostile GGUF can reach one), forks and runs `gdb` from PATH
against the crashing process, which holds keys. The runtime package turns that off before llama.cpp loads."""

import os
import signal
import subprocess
import sys

# ggml_abort is what every GGML_ASSERT calls: the message, the crash handler, then abort().
PLANTED_ASSERT = (
    "import ctypes\n"
    "from appliance.runtime.backends import library_dir\n"
    "ggml = ctypes.CDLL(str(library_dir() / 'libggml-base.so.0'))\n"
    "ggml.ggml_abort(b'planted.c', 1, b'planted assert')\n"
)


def test_a_ggml_assert_runs_no_debugger_from_path(tmp_path):
    ran = tmp_path / "gdb-ran"
    fake = tmp_path / "bin" / "gdb"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {ran}\n")
    fake.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k != "GGML_NO_BACKTRACE"}
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    r = subprocess.run([sys.executable, "-c", PLANTED_ASSERT], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGABRT and "planted assert" in r.stderr, r.stderr
    assert not ran.exists(), "ggml's crash handler ran the gdb found on PATH"
