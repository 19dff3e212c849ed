"""Each journal session's data key in a file of its own (`appliance/vault/key_files.py`): a new session leaves
vault.json as it was; what a key file swapped, deleted or put back after an erase meets; an erase leaves no
key, temp files included; a crash while a session starts leaves the old state or the new one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import KILLED_AT_FSYNC, PASSPHRASE, appliance, error_line, tree_digest

from appliance.errors import Erased
from appliance.journal import Journal, verify_session
from appliance.journal.session_files import relative_path, session_key_id
from appliance.vault import KeySlotsCorrupt, Vault, key_files
from appliance.vault.key_files import JOURNAL_KEY_ID, key_path, keys_dir
from appliance.vault.vault_file import vault_path


def _session(vault, text="hello") -> str:
    j = Journal.create(vault)
    j.append("message", role="user", text=text)
    j.close()
    return j.session_id


def test_a_new_session_leaves_vault_json_as_it_was(vault_home, vault):
    first = _session(vault)  # the first one also records the journal key
    before = vault_path(vault_home).read_bytes()
    second = _session(vault)
    assert vault_path(vault_home).read_bytes() == before
    assert key_path(vault_home, session_key_id(second)).is_file()
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as fresh:
        assert verify_session(fresh, first).ok and verify_session(fresh, second).ok


def test_a_key_file_swapped_between_sessions_is_refused_nothing_changed(vault_home, vault):
    a, b = _session(vault, "a"), _session(vault, "b")
    shutil.copy(key_path(vault_home, session_key_id(a)), key_path(vault_home, session_key_id(b)))
    state = tree_digest(vault_home)
    error_line(appliance("logs", "verify", b), 4, "key-slots-corrupt")
    assert tree_digest(vault_home) == state


def test_a_deleted_key_file_is_located(vault_home, vault):
    kept, lost = _session(vault, "kept"), _session(vault, "lost")
    key_path(vault_home, session_key_id(lost)).unlink()
    r = appliance("logs", "verify")
    assert lost in error_line(r, 3, "journal-broken")
    assert f"ok      {kept}" in r.stdout and f"BROKEN  {lost}: record 1: orphan:" in r.stdout


def test_an_erased_sessions_key_file_put_back_opens_nothing(vault_home, vault):
    kept, gone = _session(vault, "kept"), _session(vault, "gone")
    saved = key_path(vault_home, session_key_id(gone)).read_bytes()
    vault.erase([session_key_id(gone)])
    assert not key_path(vault_home, session_key_id(gone)).exists()
    key_path(vault_home, session_key_id(gone)).write_bytes(saved)
    with pytest.raises(Erased):
        vault.data_key(session_key_id(gone))
    assert verify_session(vault, kept).ok
    vault.erase([session_key_id(kept)])  # the last session: the journal key goes with it
    assert JOURNAL_KEY_ID not in vault._read_table().slots
    renewed = _session(vault, "after")  # under a fresh journal key, which the old files do not open under
    key_path(vault_home, session_key_id(renewed)).write_bytes(saved)
    with pytest.raises(KeySlotsCorrupt, match="failed authentication"):
        vault.data_key(session_key_id(renewed))


def test_erasing_one_session_leaves_no_copy_of_its_key_temp_files_included(vault_home, vault):
    kept, gone = _session(vault, "kept"), _session(vault, "gone")
    path = key_path(vault_home, session_key_id(gone))
    shutil.copy(path, vault_home / "vault" / f".{path.name}.tmp-4242")  # what a write killed before its rename leaves
    vault.erase([session_key_id(gone)])
    journal_key = vault.data_key(JOURNAL_KEY_ID)  # still live: the other session needs it
    try:
        for candidate in (p for p in vault_home.rglob("*") if p.is_file()):
            keys_dir(vault_home).mkdir(exist_ok=True)
            if candidate != path:
                shutil.copy(candidate, path)
            try:
                opened = key_files.read(vault_home, journal_key, session_key_id(gone))
            except Exception:
                continue
            finally:
                path.unlink(missing_ok=True)
            assert opened is None, f"{candidate} still opens the erased session's key"
    finally:
        journal_key[:] = bytes(len(journal_key))
    assert verify_session(vault, kept).ok


# A process that starts a session and is SIGKILLed on entry to its Nth fsync (0: never).
START_KILLED = (
    KILLED_AT_FSYNC
    + r"""
from pathlib import Path
from appliance.journal import Journal
from appliance.vault import Vault
with Vault.unlock(Path(sys.argv[2]), sys.argv[3].encode()) as vault:
    os.fsync = killing_fsync
    j = Journal.create(vault)
    j.append("message", role="user", text="started")
    j.close()
print(seen)
"""
)


def test_a_crash_while_a_session_starts_leaves_the_old_state_or_the_new(vault_home, vault, tmp_path):
    kept = _session(vault, "kept")
    pristine = tmp_path / "pristine"
    shutil.copytree(vault_home, pristine)
    run = [sys.executable, "-c", START_KILLED]
    fsyncs = int(subprocess.run([*run, "0", str(vault_home), PASSPHRASE], capture_output=True, text=True, check=True).stdout)
    for n in range(1, fsyncs + 1):
        shutil.rmtree(vault_home)
        shutil.copytree(pristine, vault_home)
        killed = subprocess.run([*run, str(n), str(vault_home), PASSPHRASE], capture_output=True, text=True)
        assert killed.returncode == -9, (n, killed.stderr)
        with Vault.unlock(vault_home, PASSPHRASE.encode()) as fresh:
            assert verify_session(fresh, kept).ok, n
            for sid in {p.stem for p in (vault_home / relative_path(kept)).parent.glob("*.journal")} - {kept}:
                report = verify_session(fresh, sid)  # recorded: sealed up to where it got; else no key at all
                assert report.ok or report.broken_at.kind == "orphan" and report.records == [], (n, report)


def test_a_vault_with_keys_in_its_table_goes_on_with_key_files_and_erases_both(tmp_path, passphrase_file):
    """tests/vault/data/format-2-state holds its sessions' keys in vault.json's table: they keep reading there,
    a new session gets a key file, and `erase logs` takes both kinds (and the journal key)."""
    home = tmp_path / "state"
    shutil.copytree(Path(__file__).parent / "data" / "format-2-state", home)
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        old = vault.key_ids("journal/")
        assert len(old) == 2 and all(i in vault._read_table().slots for i in old)
        new = session_key_id(_session(vault, "after"))
        assert vault.key_ids("journal/") == sorted([*old, new]) and key_path(home, new).is_file()
        assert all(verify_session(vault, i.split("/", 1)[1]).ok for i in vault.key_ids("journal/"))
        assert vault.erase_journal() == [JOURNAL_KEY_ID, *old]
        assert vault.key_ids("journal/") == [] and JOURNAL_KEY_ID not in vault._read_table().slots
        assert not keys_dir(home).exists()
        assert set(vault.erased_key_ids("journal/")) == set(old)  # the table's by id; the rest with the journal key
        for key_id in [*old, new]:
            with pytest.raises(Erased):
                vault.data_key(key_id)


def test_erase_logs_is_one_write_that_reads_no_session(vault_home, vault, monkeypatch):
    """Flat in the number of sessions: no key file is read, vault.json is written once and keeps no trace of them."""
    sids = [_session(vault, f"s{i}") for i in range(4)]
    writes, opened = [], []
    monkeypatch.setattr("appliance.vault.table_view.store", _counting(writes, "appliance.vault.table_view.store"))
    monkeypatch.setattr(key_files, "read", _counting(opened, "appliance.vault.key_files.read"))
    assert vault.erase_journal() == [JOURNAL_KEY_ID]
    assert len(writes) == 1 and opened == []
    table = vault._read_table()
    assert table.heads == {} and list(table.erased) == [JOURNAL_KEY_ID] and not keys_dir(vault_home).exists()
    for sid in sids:
        with pytest.raises(Erased, match="with the journal key"):
            verify_session(vault, sid)


def _counting(calls: list, name: str):
    module, attr = name.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[attr]), attr)

    def counted(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    return counted


def test_a_crash_between_the_key_and_the_files_leaves_erased_files_that_erase_logs_finishes(vault_home, vault):
    """The journal key is gone, the journal folder not yet (a crash in `erase logs` between the two): every file
    reads as erased, none as an orphan; `erase logs` again removes them; a new session starts afresh."""
    sids = [_session(vault, f"s{i}") for i in range(2)]
    vault.erase_journal()  # the first half of `erase logs`, the state a crash right after it leaves
    r = appliance("logs", "verify")
    assert r.returncode == 0 and all(f"erased  {sid}" in r.stdout for sid in sids), r.stdout
    r = appliance("erase", "logs", "--yes")
    assert r.returncode == 0 and "finished an interrupted erase" in r.stdout, r.stderr
    assert not (vault_home / "journal").exists()
    error_line(appliance("erase", "logs", "--yes"), 5, "not-found")
    new = _session(vault, "afresh")
    assert verify_session(vault, new).ok


def test_key_files_a_crash_left_go_when_a_new_journal_key_is_made(vault_home, vault, monkeypatch):
    old = _session(vault)
    with monkeypatch.context() as m:
        m.setattr("appliance.vault.session_keys.discard", lambda home, paths: [])  # killed before the key files went
        vault.erase_journal()
    assert key_path(vault_home, session_key_id(old)).is_file()  # sealed under a key that is gone
    new = _session(vault, "afresh")
    assert [p.name for p in keys_dir(vault_home).iterdir()] == [key_path(vault_home, session_key_id(new)).name]
