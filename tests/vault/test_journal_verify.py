"""What `logs verify` says when the vault and the journal folder disagree: a file with no key and no
erase record is refused (exit 3), as is a key whose file is gone after records were sealed; a key
whose session was never written (a crash between the key and its file) is not an alarm."""

import shutil

from helpers import appliance, error_line, ok

from appliance.journal import Journal, verify_session
from appliance.journal.session_files import new_session_id, relative_path, session_key_id
from appliance.vault.heads_file import heads_path
from appliance.vault.vault_file import vault_path


def _session(vault, text="hello"):
    j = Journal.create(vault)
    j.append("message", role="user", text=text)
    j.close()
    return j.session_id


def test_a_journal_file_the_vault_has_no_key_for_is_an_orphan(vault_home, vault):
    """The vault put back from before the session (its files kept): no silent skip, exit 3."""
    kept = _session(vault, "before")
    older = {p: p.read_bytes() for p in (vault_path(vault_home), heads_path(vault_home))}  # the vault: both its files
    sid = _session(vault, "written after the copy")
    for path, data in older.items():
        path.write_bytes(data)
    r = appliance("logs", "verify")
    assert sid in error_line(r, 3, "journal-broken") and "orphan" in r.stdout
    assert f"ok      {kept}" in r.stdout and f"BROKEN  {sid}: record 1: orphan:" in r.stdout
    assert "record 1: orphan" in error_line(appliance("logs", "verify", sid), 3, "journal-broken")


def test_a_planted_file_is_an_orphan(vault_home, vault):
    sid = _session(vault)
    planted = new_session_id()
    shutil.copy(vault_home / relative_path(sid), vault_home / relative_path(planted))
    assert f"BROKEN  {planted}: record 1: orphan:" in appliance("logs", "verify").stdout


def test_a_session_whose_file_was_never_made_is_not_an_alarm(vault_home, vault):
    """Killed between recording the key and creating the file (`Journal.create`): nothing was sealed, nothing is lost."""
    sid = new_session_id()
    vault.new_data_key(session_key_id(sid), files=[relative_path(sid)])
    report = verify_session(vault, sid)
    assert report.ok and report.never_written and report.records == []
    assert f"ok      {sid}: never written" in ok("logs", "verify")
    assert "never written" in ok("logs", "verify", sid)


def test_a_deleted_file_of_a_session_with_sealed_records_is_refused(vault_home, vault):
    sid = _session(vault)
    (vault_home / relative_path(sid)).unlink()
    r = appliance("logs", "verify")
    assert "record 1: deleted: the session file is missing (the vault sealed 1 records)" in error_line(r, 3, "journal-broken")


def test_the_file_an_interrupted_erase_left_is_reported_erased(vault_home, vault):
    """The key is erased before the file is deleted: a crash in between leaves ciphertext without a key."""
    sid = _session(vault)
    kept = (vault_home / relative_path(sid)).read_bytes()
    vault.erase([session_key_id(sid)])
    (vault_home / relative_path(sid)).write_bytes(kept)
    assert f"erased  {sid}: " in ok("logs", "verify")
