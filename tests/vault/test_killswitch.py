"""The kill-switch on a real generation: `appliance kill` from another process stops it early, and
finds the running appliance by the lock it holds on the pid file, never by a process name."""

import os
import resource
import subprocess
import sys

import pytest
from helpers import appliance, error_line, tree_digest
from vault_setup import PASSPHRASE, install_fake_overlay

from appliance.errors import Erased
from appliance.journal import sessions, verify_session
from appliance.vault import Vault
from appliance.vault.killswitch import pid_path

LONG = ("ask", "Write a very long, detailed story about a lighthouse keeper, chapter by chapter.", "--max-tokens", "2000")


def _start_long_generation():
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", *LONG], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy()
    )
    first = proc.stdout.read(1)  # streaming has begun: the generation loop is running
    assert first, proc.stderr.read().decode()
    return proc


def _kill_and_collect(home, *kill_args):
    proc = _start_long_generation()
    r = appliance("kill", *kill_args)
    _out, err = proc.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert proc.returncode == 4, err.decode()  # the documented exit code of a killed command: locked
    assert err.decode().splitlines()[-1].endswith(" [killed]"), err.decode()
    assert not pid_path(home).exists()
    vault = Vault.unlock(home, PASSPHRASE)
    (sid,) = sessions(vault)
    report = verify_session(vault, sid)
    assert report.ok, report.broken_at
    return report.records, vault


def test_kill_stops_generation_early_and_journals_it(vault_home):
    records, _ = _kill_and_collect(vault_home)
    user, reply, kill = records
    assert user["role"] == "user" and reply["role"] == "assistant"
    assert reply["finish"] == "cancelled" and reply["tokens"] < 500  # far fewer than the 2000 asked
    assert kill["kind"] == "kill" and kill["wipe"] is False


def _fake_overlay(home):
    vault = Vault.unlock(home, PASSPHRASE)
    path = install_fake_overlay(home, vault, "care", 1, b"weights" * 1000)
    vault.zeroize()
    return path


@pytest.mark.parametrize("how", ["--wipe", "policy"])
def test_kill_wipe_erases_the_overlays(vault_home, how):
    ciphertext = _fake_overlay(vault_home)
    if how == "policy":
        assert "kill policy: wipe" in appliance("kill-policy", "wipe").stdout
    records, vault = _kill_and_collect(vault_home, *([how] if how == "--wipe" else []))
    assert records[-1]["kind"] == "kill" and records[-1]["wipe"] is True
    assert records[-1]["overlays_erased"] == ["overlay/care/1"]
    with pytest.raises(Erased):
        vault.data_key("overlay/care/1")
    assert not ciphertext.exists()


def test_kill_with_nothing_running_is_not_found(vault_home):
    assert "no running appliance" in error_line(appliance("kill"), 5, "not-found")


def test_kill_signals_no_process_by_its_name(vault_home):
    """A stale pid file naming a live process whose command line says appliance: nothing runs."""
    decoy = subprocess.Popen(["bash", "-c", "exec -a not-the-appliance sleep 600"])
    try:
        pid_path(vault_home).write_text(f"{decoy.pid}\n")
        r = appliance("kill")
        assert "no running appliance" in error_line(r, 5, "not-found")
        assert decoy.poll() is None  # not signalled
    finally:
        decoy.kill()
        decoy.wait()


def test_a_pid_file_nobody_holds_is_stale(vault_home):
    """Left by a crash, naming a live process (this one): the next appliance takes it over, and leaves none."""
    pid_path(vault_home).write_text(f"{os.getpid()}\n")
    assert appliance("kill").returncode == 5
    r = appliance("ask", "hello", "--max-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert not pid_path(vault_home).exists()


def test_a_pid_file_that_cannot_be_written_leaves_nothing_behind(vault_home):
    """The write of the pid fails (a full disk; here RLIMIT_FSIZE 0, the same failing write): no file is left."""
    before = tree_digest(vault_home)
    r = subprocess.run([sys.executable, "-m", "appliance", "ask", "hello"], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)))  # fmt: skip
    assert r.returncode != 0 and r.stderr.startswith("error:"), r.stderr
    assert tree_digest(vault_home) == before


_HOLDER = (
    "import sys; from pathlib import Path; from appliance.vault.killswitch import KillSwitch\n"
    "with KillSwitch(Path(sys.argv[1])):\n    print('holding', flush=True); sys.stdin.read()"
)


def test_a_second_appliance_on_one_state_dir_is_refused(vault_home):
    """Another process holds the pid file, as a running chat does: `ask` is refused, the holder keeps it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(vault_home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        r = appliance("ask", "hello", "--max-tokens", "1")
        assert f"(pid {holder.pid})" in error_line(r, 3, "already-running")
        assert pid_path(vault_home).read_text().strip() == str(holder.pid)
    finally:
        holder.communicate("", timeout=60)
    assert not pid_path(vault_home).exists()
