"""An erased key leaves no copy in the state dir, even after a vault write was killed half-way.

A vault write killed before its rename leaves its temp file (`.vault.json.tmp-PID`): a whole
vault, the keys of that moment included. Put back over `vault.json` after an erase, it would
bring the erased keys back to whoever has the passphrase. Here vault-writing commands are killed
at each of their fsyncs in turn; then `erase logs` or `erase all` runs; then every vault file
found anywhere under the state dir is put in place and tried: none may open the erased session's key.
"""

import itertools
import json
import shutil
import subprocess
import sys

import pytest
from helpers import KILLED_AT_FSYNC, PASSPHRASE, appliance

from appliance.errors import Erased, Locked, NotFound
from appliance.journal import Journal
from appliance.journal.session_files import session_key_id
from appliance.vault import KeySlotsCorrupt, Vault
from appliance.vault.key_files import key_path

# The real CLI with os.fsync counted, and the process SIGKILLed on entry to the Nth call (0: never).
KILL_AT_FSYNC = (
    KILLED_AT_FSYNC
    + r"""
import atexit
os.fsync = killing_fsync
atexit.register(lambda: print(f"fsyncs: {seen}", file=sys.stderr))
from appliance.cli.main import main
main(sys.argv[2:])
"""
)

TABLE_WRITE = ("kill-policy", "wipe")  # the smallest command that rewrites the vault file


def _run_killed_at(n: int, args: list[str], via: str) -> subprocess.CompletedProcess:
    if via == "python":
        cmd = [sys.executable, "-c", KILL_AT_FSYNC, str(n), *args]
    else:
        cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e", f"inject=fsync:signal=SIGKILL:when={n}",
               sys.executable, "-m", "appliance", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _fsyncs(args: list[str]) -> int:
    r = _run_killed_at(0, args, "python")
    return int(r.stderr.rsplit("fsyncs: ", 1)[1])


def _restore(home, pristine) -> None:
    shutil.rmtree(home)
    shutil.copytree(pristine, home)


def _format(path) -> str | None:
    try:
        return json.loads(path.read_bytes()).get("format")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def _copies_that_open(home, key_id: str, scratch) -> list[str]:
    """Every vault file under `home` that, put in place with each session key file found there
    (`appliance/vault/key_files.py`), yields `key_id`'s key."""
    found = []
    files = [p for p in home.rglob("*") if p.is_file()]
    key_copies = [None, *(p for p in files if _format(p) == "appliance-session-key/1")]
    for copy, key_copy in itertools.product((p for p in files if _format(p) == "appliance-vault/2"), key_copies):
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "vault").mkdir(parents=True)
        shutil.copy(copy, scratch / "vault" / "vault.json")
        shutil.copytree(home / "vault", scratch / "vault", ignore=lambda *_: ["vault.json"], dirs_exist_ok=True)
        if key_copy is not None:
            key_path(scratch, key_id).parent.mkdir(exist_ok=True)
            shutil.copy(key_copy, key_path(scratch, key_id))
        try:
            vault = Vault.unlock(scratch, PASSPHRASE.encode())
        except (Locked, Erased):
            continue
        try:
            vault.data_key(key_id)
            found.append(f"{copy.relative_to(home)} with {key_copy and key_copy.relative_to(home)}")
        except (Erased, NotFound, KeySlotsCorrupt):  # the last: a key file of another session, or another journal key
            pass
        finally:
            vault.zeroize()
    return found


@pytest.fixture
def journalled(vault_home, vault):
    """The state dir with one journal session: the key id every erase below must leave unrecoverable."""
    j = Journal.create(vault)
    j.append("message", role="user", text="what the erase must take away")
    j.close()
    return vault_home, session_key_id(j.session_id)


def _check_every_kill_point(home, key_id, interrupted: list[tuple[str, ...]], erase: str, via: str, tmp_path) -> None:
    """For each combination of kill points, the interrupted commands in order, then the erase, then the proof."""
    pristine = tmp_path / "pristine"
    shutil.copytree(home, pristine)
    assert _copies_that_open(home, key_id, tmp_path / "scratch")  # the proof can see a key when there is one
    kill_points = []
    for args in interrupted:
        _restore(home, pristine)
        kill_points.append(range(1, _fsyncs(args) + 1))
    for points in itertools.product(*kill_points):
        _restore(home, pristine)
        for args, n in zip(interrupted, points, strict=True):
            killed = _run_killed_at(n, args, via)
            assert killed.returncode == -9, (args, n, killed.stderr)
        r = appliance("erase", erase, "--yes")
        assert r.returncode in ((0, 5) if erase == "logs" else (0,)), r.stderr  # 5: the killed erase had done it
        leftovers = _copies_that_open(home, key_id, tmp_path / "scratch")
        assert not leftovers, f"{interrupted} killed at fsyncs {points}, then erase {erase}: {leftovers} open {key_id}"


@pytest.mark.parametrize("interrupted", [TABLE_WRITE, ("erase", "logs", "--yes")], ids=lambda args: args[0])
def test_erase_logs_leaves_no_copy_of_the_keys(journalled, tmp_path, interrupted):
    _check_every_kill_point(*journalled, [interrupted], "logs", "python", tmp_path)


def test_erase_all_leaves_no_copy_of_the_keys(journalled, passphrase_file, tmp_path):
    """A passphrase change and a table write, each killed at every point, then `erase all`: no copy left opens."""
    rekey = ("passphrase", "--new-passphrase-file", str(passphrase_file))  # "changed" to itself: the same one opens
    _check_every_kill_point(*journalled, [rekey, TABLE_WRITE], "all", "python", tmp_path)


@pytest.mark.skipif(
    shutil.which("strace") is None, reason="no strace here: the pure-Python injection above kills at the same calls"
)
def test_the_same_with_kills_injected_by_strace(journalled, tmp_path):
    """The kernel's view: every fsync(2) the process makes, not only those Python's os.fsync makes."""
    _check_every_kill_point(*journalled, [TABLE_WRITE], "logs", "strace", tmp_path)
