"""The journal's index of session summaries: `logs list` pages from it, and the journal stays the authority.

An index deleted, put back from an older copy, brought from another vault or damaged is rebuilt from the
journal where it is behind: no session is lost from a listing, and no summary it cannot open is shown.
"""

import shutil

import pytest
from helpers import PASSPHRASE, TEST_KDF, appliance, ok

from appliance import state
from appliance.journal import Journal, index, listing
from appliance.journal.listing import PAGE, Listing
from appliance.journal.session_files import sessions
from appliance.vault import Vault


def _session(vault, text: str, first_kind: str | None = None) -> str:
    j = Journal.create(vault)
    if first_kind:
        j.append(first_kind, detail="before any message")
    j.append("message", role="user", text=text)
    j.close()
    return j.session_id


def _index_files(home):
    return [home / "journal" / name for name in (index.INDEX_FILE, index.TAIL_FILE)]


def _copy_index(home, to):
    to.mkdir()
    for path in _index_files(home):
        if path.exists():
            shutil.copy2(path, to / path.name)


def _put_index(home, frm):
    for path in _index_files(home):
        path.unlink(missing_ok=True)
        if (frm / path.name).exists():
            shutil.copy2(frm / path.name, path)


def _listed(vault, monkeypatch) -> tuple[list[tuple[str, int, str]], int, int]:
    """Every session as the listing shows it, newest first, and how many it read from the journal and lines it could not open."""
    read = [0]
    real = listing.verify_session

    def counted(v, sid):
        read[0] += 1
        return real(v, sid)

    monkeypatch.setattr(listing, "verify_session", counted)
    with vault.pinned(), Listing(vault) as shown:
        rows = [(r.session_id, r.records, r.summary.first if r.summary else r.trouble) for r in shown.rows(sessions(vault)[::-1])]
    monkeypatch.setattr(listing, "verify_session", real)
    return rows, read[0], shown.unopened


def test_a_listing_reads_no_session_the_index_knows(vault, monkeypatch):
    sids = [_session(vault, f"question {i}") for i in range(4)]
    sids.append(_session(vault, "a resumed one", first_kind="resume"))
    rows, read, unopened = _listed(vault, monkeypatch)
    texts = {sid: (2 if sid == sids[-1] else 1, f"question {i}" if i < 4 else "a resumed one") for i, sid in enumerate(sids)}
    assert rows == [(sid, *texts[sid]) for sid in sorted(sids, reverse=True)]
    assert read == 0 and unopened == 0


def test_a_deleted_index_is_rebuilt_from_the_journal(vault_home, vault, monkeypatch):
    for i in range(3):
        _session(vault, f"question {i}")
    before, _, _ = _listed(vault, monkeypatch)
    for path in _index_files(vault_home):
        path.unlink(missing_ok=True)
    rebuilt, read, _ = _listed(vault, monkeypatch)
    assert rebuilt == before and read == 3
    assert _listed(vault, monkeypatch)[1] == 0  # and written back: the next listing reads nothing


def test_an_older_index_put_back_is_behind_and_caught_up(vault_home, vault, tmp_path, monkeypatch):
    """A session added since and one whose first message came since are read again; none is lost."""
    _session(vault, "kept")
    j = Journal.create(vault)
    j.append("resume", detail="no message yet")  # its summary says "(resume)" at 1 record
    _copy_index(vault_home, tmp_path / "old")
    j.append("message", role="user", text="its first message came later")
    j.close()
    new = _session(vault, "made since")
    current, _, _ = _listed(vault, monkeypatch)
    _put_index(vault_home, tmp_path / "old")
    caught_up, read, unopened = _listed(vault, monkeypatch)
    assert caught_up == current and read == 2 and unopened == 0
    assert (j.session_id, 2, "its first message came later") in caught_up and new in [r[0] for r in caught_up]


def test_an_index_from_another_vault_counts_for_nothing(vault_home, vault, tmp_path, monkeypatch):
    sids = [_session(vault, f"question {i}") for i in range(2)]
    other = tmp_path / "other"
    state.initialise(other)
    Vault.create(other, PASSPHRASE.encode(), cost=TEST_KDF).zeroize()
    with Vault.unlock(other, PASSPHRASE.encode()) as elsewhere:
        _session(elsewhere, "a summary of another vault")
    before, _, _ = _listed(vault, monkeypatch)
    _put_index(vault_home, other / "journal")
    assert _listed(vault, monkeypatch)[:2] == (before, 2)  # ours are read from the journal, none of its shown
    # Its line relabelled to claim this vault's sessions: it does not open (another key, and the label is bound).
    _, tail = _index_files(vault_home)
    sealed = (other / "journal" / index.TAIL_FILE).read_bytes().split(b" ", 2)[2]
    tail.write_bytes(f"{min(sids)} {max(sids)} ".encode() + sealed)
    rows, read, unopened = _listed(vault, monkeypatch)
    assert rows == before and read == 2 and unopened == 1
    assert _listed(vault, monkeypatch)[1:] == (0, 0)  # rewritten without the line it could not open


def test_a_damaged_line_counts_for_nothing(vault_home, vault, monkeypatch):
    sids = [_session(vault, f"question {i}") for i in range(2)]
    tail = vault_home / "journal" / index.TAIL_FILE
    lines = tail.read_bytes().splitlines(keepends=True)
    at = len(lines[0]) - 20  # inside the sealed part
    lines[0] = lines[0][:at] + (b"A" if lines[0][at : at + 1] != b"A" else b"B") + lines[0][at + 1 :]
    tail.write_bytes(b"".join(lines))
    rows, read, unopened = _listed(vault, monkeypatch)
    assert [r[0] for r in rows] == sorted(sids, reverse=True) and read == 1 and unopened == 1


def test_the_tail_is_folded_into_the_index(vault_home, vault, monkeypatch):
    monkeypatch.setattr(index, "TAIL_BYTES", 600)  # a few summaries
    sids = [_session(vault, f"question {i}") for i in range(5)]
    assert (vault_home / "journal" / index.INDEX_FILE).exists()
    rows, read, _ = _listed(vault, monkeypatch)
    assert [r[0] for r in rows] == sorted(sids, reverse=True) and read == 0


@pytest.fixture
def many(vault):
    """Their ids, the newest first (sessions made within one second are ordered by their random part)."""
    return sorted((_session(vault, f"question {i}") for i in range(PAGE + 3)), reverse=True)


def test_logs_list_shows_the_newest_page_and_says_how_to_see_the_rest(vault_home, many):
    first = appliance("logs", "list")
    assert first.returncode == 0, first.stderr
    shown = [line.split()[0] for line in first.stdout.splitlines()]
    assert shown == many[:PAGE]
    assert f"sessions 1-{PAGE} of {PAGE + 3}" in first.stderr and "--page 2" in first.stderr and "--all" in first.stderr
    second = ok("logs", "list", "--page", "2")
    assert [line.split()[0] for line in second.splitlines()] == many[PAGE:]
    assert "question " in first.stdout.splitlines()[0] and "1 records" in first.stdout
    every = ok("logs", "list", "--all")
    assert [line.split()[0] for line in every.splitlines()] == many
    past = appliance("logs", "list", "--page", "3")
    assert past.returncode == 0 and past.stdout == "" and "past the last" in past.stderr
