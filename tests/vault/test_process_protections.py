"""What a crash or another process can read of the secrets: no core file, no dumpable process,
memory locked where the OS allows, passphrase buffers zeroed, passphrase files private."""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PASSPHRASE, appliance

from appliance.cli import unlocking

LONG = ("ask", "Write a very long, detailed story about a lighthouse keeper, chapter by chapter.", "--max-tokens", "2000")


def _core_limit(pid: int) -> str:
    line = next(row for row in Path(f"/proc/{pid}/limits").read_text().splitlines() if row.startswith("Max core file size"))
    return " ".join(line.split()[4:6])  # soft and hard


def test_a_crash_during_ask_writes_no_core(vault_home, tmp_path):
    """`ulimit -c unlimited`, then SIGSEGV while `ask` generates: the passphrase and keys are in its memory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    core_dir = (cwd / pattern).parent  # a relative pattern lands in the crashing process's cwd
    before = set(core_dir.iterdir()) if not pattern.startswith("|") else set()

    def unlimited_cores():
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    proc = subprocess.Popen([sys.executable, "-m", "appliance", *LONG], cwd=cwd, preexec_fn=unlimited_cores,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())  # fmt: skip
    try:
        assert proc.stdout.read(1), proc.stderr.read().decode()  # generating: the vault is open
        limit = _core_limit(proc.pid)
        os.kill(proc.pid, signal.SIGSEGV)
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGSEGV
    assert limit == "0 0"  # read back from the kernel while it ran: ulimit -c unlimited did not survive the start
    if pattern.startswith("|"):
        # A handler takes cores through a pipe (RLIMIT_CORE does not stop those); what stops them,
        # PR_SET_DUMPABLE 0, is read back by `status` (test below).
        return
    assert set(core_dir.iterdir()) == before, f"a core was written ({pattern})"


def test_status_reports_the_protections_in_force(vault_home):
    r = appliance("status")
    assert r.returncode == 0, r.stderr
    (line,) = [row for row in r.stdout.splitlines() if row.startswith("process:")]
    assert "core dumps off" in line and "not dumpable" in line and "umask 077" in line
    assert re.search(r"(memory locked|key memory locked|memory NOT locked) \(.+\)", line), line


@pytest.mark.parametrize("memlock, says", [(64 << 10, "key memory locked (RLIMIT_MEMLOCK 64 KiB: key buffers only)"),
                                           (0, "memory NOT locked (RLIMIT_MEMLOCK 0 KiB; mlock refused")])  # fmt: skip
def test_under_a_memlock_limit_only_key_buffers_are_locked(vault_home, memlock, says):
    """MCL_FUTURE under a limit would fail the allocation that crosses it: a limited process locks keys only."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run without CAP_IPC_LOCK")
    r = appliance("status", prefix=["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "--",
                                    "prlimit", f"--memlock={memlock}"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert says in r.stdout
    ask = appliance("ask", "hello", "--max-tokens", "2", prefix=["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock",
                                                                "--", "prlimit", f"--memlock={memlock}"])  # fmt: skip
    assert ask.returncode == 0, ask.stderr  # and it still works


def test_the_passphrase_buffer_is_zeroed_once_the_vault_has_it(vault_home, monkeypatch):
    seen = []
    real = unlocking.Vault.unlock
    monkeypatch.setattr(unlocking.Vault, "unlock", lambda home, passphrase: seen.append(passphrase) or real(home, passphrase))
    with unlocking.unlocked(None):
        pass
    (passphrase,) = seen
    assert isinstance(passphrase, bytearray) and len(passphrase) == len(PASSPHRASE.encode()) and not any(passphrase)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_passphrase_file_others_can_open_is_refused(vault_home, passphrase_file, mode):
    """As ssh refuses a private key others can read: reading discloses it, writing chooses the next one."""
    passphrase_file.chmod(mode)
    r = appliance("logs", "list")
    assert r.returncode == 4, r.stderr
    assert f"chmod 600 {passphrase_file}" in r.stderr and r.stderr.count("\n") == 1
    passphrase_file.chmod(0o600)
    assert appliance("logs", "list").returncode == 0


def test_passphrase_file_line_endings(vault_home, passphrase_file):
    for content in (PASSPHRASE.encode(), PASSPHRASE.encode() + b"\n", PASSPHRASE.encode() + b"\r\n"):
        passphrase_file.write_bytes(content)
        assert appliance("logs", "list").returncode == 0
    passphrase_file.write_bytes(PASSPHRASE.encode() + b"\n\n")  # a second line is part of the passphrase
    assert appliance("logs", "list").returncode == 4


def test_a_child_that_dies_with_its_parent_is_gone_when_the_parent_is_sigkilled(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = f"from appliance.hardening import die_with_parent; import os, time; die_with_parent(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)",
        ]
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
