"""The kill-switch on a real generation: `appliance kill` from another process stops it early, even in
the middle of a long prefill; finds the running appliance by the lock it holds on the pid file, never
by a process name; and ends with SIGKILL (then wipes itself) one that does not confirm."""

import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
from helpers import PASSPHRASE, appliance, error_line, install_demo_overlay, tree_digest

from appliance.errors import Erased
from appliance.journal import sessions, verify_session
from appliance.vault import Vault
from appliance.vault.killswitch import KILL_GRACE_SECONDS, pid_path, running_pid, stop_running

LONG = ("ask", "Write a very long, detailed story about a lighthouse keeper, chapter by chapter.", "--max-tokens", "2000")


def _start_long_generation():
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", *LONG], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy()
    )
    first = proc.stdout.read(1)  # streaming has begun: the generation loop is running
    assert first, proc.stderr.read().decode()
    return proc


def _kill_and_collect(home, *kill_args):
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        before = set(sessions(vault))  # an import's trust changes have a session of their own
    proc = _start_long_generation()
    r = appliance("kill", *kill_args)
    _out, err = proc.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert proc.returncode == 4, err.decode()  # the documented exit code of a killed command: locked
    assert err.decode().splitlines()[-1].endswith(" [killed]"), err.decode()
    assert not pid_path(home).exists()
    vault = Vault.unlock(home, PASSPHRASE.encode())
    (sid,) = set(sessions(vault)) - before
    report = verify_session(vault, sid)
    assert report.ok, report.broken_at
    return report.records, vault


def test_kill_stops_generation_early_and_journals_it(vault_home):
    records, _ = _kill_and_collect(vault_home)
    user, reply, kill = records
    assert user["role"] == "user" and reply["role"] == "assistant"
    assert reply["finish"] == "cancelled" and reply["tokens"] < 500  # far fewer than the 2000 asked
    assert kill["kind"] == "kill" and kill["wipe"] is False


def _installed_overlay(home):
    """The demo overlay's key id and ciphertext files, and the journal sessions its import left (its trust changes)."""
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        return *install_demo_overlay(vault), set(sessions(vault))


@pytest.mark.parametrize("how", ["--wipe", "policy"])
def test_kill_wipe_erases_the_overlays(vault_home, how):
    key_id, ciphertext, _ = _installed_overlay(vault_home)
    if how == "policy":
        assert "kill policy: wipe" in appliance("kill-policy", "wipe").stdout
    records, vault = _kill_and_collect(vault_home, *([how] if how == "--wipe" else []))
    assert records[-1]["kind"] == "kill" and records[-1]["wipe"] is True
    assert records[-1]["overlays_erased"] == [key_id]
    with pytest.raises(Erased):
        vault.data_key(key_id)
    assert not any(path.exists() for path in ciphertext)


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


# About 3,600 words, 3,630 tokens with the template: the window (4096) holds it and the reply's room.
PREFILL = ("ask", " ".join(["the keeper lit the lamp and wound the clock"] * 400), "--max-tokens", "8")
# From the signal to the killed `ask`'s confirmation (stopped within one graph node, `kill` record and
# wipe written, keys zeroed), as `kill` reports it: 1 s, generous on a loaded 2-core machine (a few
# fsyncs). Today's prefill of this prompt takes far longer. The `kill` command as a whole gets more:
# its own start alone can take 2 s there.
KILL_CONFIRMED_WITHIN = 1.0
KILL_RETURNS_WITHIN = 15.0


def _stopped_in(r) -> float:
    """The seconds `kill` reports from its signal to the appliance's confirmation."""
    (seconds,) = re.findall(r"stopped appliance pid \d+ in ([0-9.]+) s", r.stdout)
    return float(seconds)


def _start(args, home):
    """`appliance ARGS` in the background, returned once its journal session is open (an `ask` opens it with
    the user's message, just before the prefill starts)."""
    journal = home / "journal"
    before = set(journal.iterdir()) if journal.is_dir() else set()  # an import's trust changes have their own session
    proc = subprocess.Popen([sys.executable, "-m", "appliance", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (journal.is_dir() and set(journal.iterdir()) - before):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "ask never reached its prefill"
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("wipe", [False, True], ids=["kill", "kill-wipe"])
def test_a_kill_lands_during_a_long_prefill(vault_home, wipe):
    key_id, ciphertext, before = _installed_overlay(vault_home)
    proc = _start(PREFILL, vault_home)
    time.sleep(0.5)  # well into the prefill
    t0 = time.monotonic()
    r = appliance("kill", *(["--wipe"] if wipe else []))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took < KILL_RETURNS_WITHIN and _stopped_in(r) < KILL_CONFIRMED_WITHIN, (took, r.stdout)
    assert "SIGKILL" not in r.stderr  # the appliance confirmed: no escalation was needed
    _out, err = proc.communicate(timeout=10)  # gone: it had released everything before `kill` returned
    assert proc.returncode == 4 and err.decode().splitlines()[-1].endswith(" [killed]"), err.decode()
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    (sid,) = set(sessions(vault)) - before
    user, reply, kill = verify_session(vault, sid).records
    assert (
        user["role"] == "user" and reply["finish"] == "cancelled" and reply["tokens"] == 0
    )  # stopped before a token was sampled
    assert kill["kind"] == "kill" and kill["wipe"] is wipe
    if wipe:
        assert kill["overlays_erased"] == [key_id] and not any(path.exists() for path in ciphertext)
        with pytest.raises(Erased):
            vault.data_key(key_id)
    else:
        assert vault.key_ids("overlay/") == [key_id]


def test_a_process_that_does_not_confirm_is_sigkilled_and_kill_wipes_itself(vault_home):
    """The floor: an appliance that cannot act on the signal (here SIGSTOPped mid-prefill, as one stuck would be)
    is ended with SIGKILL once the grace time is over, and `kill --wipe` does the wipe itself, journalled."""
    key_id, ciphertext, _ = _installed_overlay(vault_home)
    proc = _start(PREFILL, vault_home)
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    r = appliance("kill", "--wipe")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert f"appliance pid {proc.pid} did not confirm the kill" in r.stderr and "SIGKILL" in r.stderr
    assert key_id in r.stdout
    assert KILL_GRACE_SECONDS <= _stopped_in(r) < KILL_GRACE_SECONDS + KILL_CONFIRMED_WITHIN and took < KILL_RETURNS_WITHIN
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert running_pid(vault_home) is None
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with pytest.raises(Erased):
        vault.data_key(key_id)
    assert not any(path.exists() for path in ciphertext)
    journalled = [verify_session(vault, sid).records for sid in sessions(vault)]
    (own,) = [records for records in journalled if [r["kind"] for r in records] == ["kill"]]  # `kill`'s own session
    assert own[0]["wipe"] is True and own[0]["overlays_erased"] == [key_id]


_CONFIRMING = (
    "import sys; from pathlib import Path; from appliance.vault.killswitch import KillSwitch\n"
    "with KillSwitch(Path(sys.argv[1])) as ks:\n    print('holding', flush=True); ks.cancel.wait(); ks.confirm(ks.wipe)"
)


@pytest.mark.parametrize(
    "holder, wipe, confirmed, sigkilled",
    [(_CONFIRMING, False, "killed", False), (_CONFIRMING, True, "wiped", False), (_HOLDER, True, "", True)],
    ids=["confirms-kill", "confirms-wipe", "never-confirms"],
)
def test_stop_running_reads_the_confirmation_or_ends_the_process(vault_home, holder, wipe, confirmed, sigkilled):
    """The kill's verdict as a function: what the holder wrote in the pid file, or SIGKILL once the grace is over."""
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(vault_home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "holding\n"
        stopped = stop_running(vault_home, wipe, grace=1.0)
    finally:
        proc.communicate("", timeout=60)
    assert (stopped.pid, stopped.confirmed, stopped.sigkilled) == (proc.pid, confirmed, sigkilled)
    assert proc.returncode == (-signal.SIGKILL if sigkilled else 0)
    assert running_pid(vault_home) is None
