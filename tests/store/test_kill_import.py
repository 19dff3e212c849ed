"""`appliance kill --wipe` during `update import`: every command that unlocks the vault holds the pid lock
(cli/unlocking.py), so `kill` finds the import, stops it, and nothing it imported stays decryptable.

Here rather than under tests/vault because it needs signer keys and pinned homes (`bundles.py`)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from bundles import make_bundle
from helpers import PASSPHRASE, appliance

from appliance.vault import Vault
from appliance.vault.killswitch import WIPE_SIGNAL, running_pid


def _pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits, undelivered, for process `pid` (a stopped process takes it when continued)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def test_kill_wipe_during_an_import_stops_it_and_nothing_it_imported_is_decryptable(home, keys, tmp_path):
    (tmp_path / "b").mkdir()
    bundle = make_bundle(keys, tmp_path / "b" / "care.bundle")
    importing = subprocess.Popen(
        [sys.executable, "-m", "appliance", "update", "import", str(bundle)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while running_pid(home) != importing.pid:  # the import holds the pid lock from before it unlocks the vault
        assert importing.poll() is None, f"the import ended without ever holding the pid lock: {importing.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    # Held still until the wipe signal is on its way, so `kill` finds it mid-import whatever the machine's load.
    importing.send_signal(signal.SIGSTOP)
    kill = subprocess.Popen([sys.executable, "-m", "appliance", "kill", "--wipe"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not _pending(importing.pid, WIPE_SIGNAL):
        assert kill.poll() is None, kill.communicate()
        time.sleep(0.001)
    importing.send_signal(signal.SIGCONT)

    out, err = kill.communicate(timeout=120)
    assert kill.returncode == 0, err.decode()
    assert f"stopped appliance pid {importing.pid}" in out.decode()
    _, err = importing.communicate(timeout=60)
    # Either it ended the import and wiped as it exited (exit 4, killed), or it had not confirmed within the
    # grace time and `kill` ended it (SIGKILL) and wiped itself: either way, nothing of it stays readable.
    assert importing.returncode in (4, -signal.SIGKILL), err.decode()
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        assert vault.key_ids("overlay/") == []
    finally:
        vault.zeroize()
    r = appliance("ask", "hi", "--overlay", "on", "--max-tokens", "1")
    assert r.returncode in (5, 6) and r.stderr.startswith("error:"), r.stderr  # none installed, or erased
