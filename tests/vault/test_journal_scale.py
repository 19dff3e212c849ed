"""The journal as its history grows: reading many sessions opens the vault's table once, not once a session."""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import PASSPHRASE, TEST_KDF, appliance, error_line, ok, tree_digest

from appliance import state
from appliance.journal import Journal, verify_session
from appliance.journal.session_files import relative_path, session_key_id
from appliance.vault import Vault, VaultRolledBack, vault_file
from appliance.vault.heads_file import heads_path
from appliance.vault.vault_file import vault_path

FORMAT_2_STATE = Path(__file__).parent / "data" / "format-2-state"  # written with every head in vault.json's table


def _sessions(vault, n: int) -> None:
    for i in range(n):
        j = Journal.create(vault)
        j.append("message", role="user", text=f"question {i}")
        j.append("message", role="assistant", text=f"answer {i}")
        j.close()


def _table_decryptions(monkeypatch, capsys, *args: str) -> int:
    """How often the real command `appliance ARGS`, run in process, decrypts the vault's table."""
    from appliance.cli.main import main

    count, real = [0], vault_file.unseal

    def unseal(key, sealed, ad):
        count[0] += ad == vault_file.TABLE_AD
        return real(key, sealed, ad)

    monkeypatch.setattr(vault_file, "unseal", unseal)
    # In process, so not the process protections (their core limit of 0 cannot be raised again).
    monkeypatch.setattr("appliance.cli.main.harden_process", lambda: None)
    with pytest.raises(SystemExit) as done:
        main(list(args))
    assert done.value.code == 0, capsys.readouterr().err
    monkeypatch.setattr(vault_file, "unseal", real)
    return count[0]


@pytest.mark.parametrize("command", [("logs", "list"), ("logs", "verify"), ("logs", "search", "answer")])
def test_reading_every_session_decrypts_the_table_a_constant_number_of_times(vault, monkeypatch, capsys, command):
    _sessions(vault, 3)
    few = _table_decryptions(monkeypatch, capsys, *command)
    _sessions(vault, 12)
    many = _table_decryptions(monkeypatch, capsys, *command)
    assert capsys.readouterr().out.count("answer 11") == (command[1] == "search")  # it did read the sessions
    assert few == many <= 2, (few, many)


def test_a_write_by_another_process_is_seen_at_the_next_read(vault_home, vault):
    """The kept view is dropped once vault.json was replaced: keys recorded elsewhere are there."""
    assert vault.key_ids() == []
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as other:
        other.new_data_key("overlay/care/1")
    assert vault.key_ids() == ["overlay/care/1"]
    vault.new_data_key("overlay/care/2")  # written over the other's table, not over the view kept before it
    assert vault.key_ids() == ["overlay/care/1", "overlay/care/2"]


# -- heads.json: an append moves one head, not the table ----------------------------------------


def _session(vault, n: int = 2) -> str:
    j = Journal.create(vault)
    for i in range(n):
        j.append("message", role="user", text=f"record {i + 1}")
    j.close()
    return j.session_id


def _append(vault, sid: str, text: str) -> None:
    """One more record at the end of session `sid`, written as `Journal.append` writes it."""
    seq, digest = vault.head(session_key_id(sid))
    j = Journal(vault, sid, vault.data_key(session_key_id(sid)), _append_fd(vault, sid), seq, bytes.fromhex(digest), 0)
    j.append("message", role="user", text=text)
    j.close()


def _append_fd(vault, sid: str) -> int:
    return os.open(vault.home / relative_path(sid), os.O_WRONLY | os.O_APPEND)


def test_an_append_leaves_vault_json_as_it_was_and_raises_the_generation(vault_home, vault):
    sid = _session(vault, 1)
    before, generation = vault_path(vault_home).read_bytes(), vault.generation()[0]
    _append(vault, sid, "two")
    _append(vault, sid, "three")
    assert vault_path(vault_home).read_bytes() == before
    assert vault.generation()[0] == generation + 2
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as fresh:  # another process sees the heads and the generation
        assert fresh.head(session_key_id(sid))[0] == 3 and fresh.generation()[0] == generation + 2
        assert verify_session(fresh, sid).ok


def test_an_older_heads_file_put_back_is_an_older_generation(vault_home, vault):
    """The heads of the records cut off go back with it: what shows it is the generation, as for vault.json."""
    sid = _session(vault, 2)
    older, journal = heads_path(vault_home).read_bytes(), (vault_home / relative_path(sid)).read_bytes()
    _append(vault, sid, "three")
    seen = vault.generation()[0]
    heads_path(vault_home).write_bytes(older)
    (vault_home / relative_path(sid)).write_bytes(journal)
    with pytest.raises(VaultRolledBack):  # the running appliance
        vault.head(session_key_id(sid))
    line = error_line(appliance("logs", "verify", "--generation", str(seen)), 3, "vault-rolled-back")
    assert f"generation {seen - 1}" in line  # the operator's noted number


def test_a_heads_file_from_another_vault_is_refused_nothing_changed(vault_home, vault, tmp_path):
    sid = _session(vault, 2)
    other = tmp_path / "other"
    with Vault.create(other, PASSPHRASE.encode(), cost=TEST_KDF) as theirs:
        _session(theirs, 1)
    base = [json.loads(heads_path(home).read_bytes())["base"] for home in (vault_home, other)]
    assert base[0] == base[1]  # both continue a vault.json of the same generation: only the key tells them apart
    heads_path(vault_home).write_bytes(heads_path(other).read_bytes())
    state = tree_digest(vault_home)
    error_line(appliance("logs", "verify", sid), 4, "key-slots-corrupt")
    assert tree_digest(vault_home) == state


def test_a_write_of_vault_json_takes_the_heads_in_and_a_stale_heads_file_counts_for_nothing(vault_home, vault):
    """A crash between vault.json's rename and the removal of heads.json leaves the new vault and a stale file."""
    sid = _session(vault, 2)
    stale = heads_path(vault_home).read_bytes()
    vault.set_setting("n", 1)
    assert not heads_path(vault_home).exists() and vault.head(session_key_id(sid))[0] == 2
    heads_path(vault_home).write_bytes(stale)  # as a crash before the removal leaves it
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as fresh:
        assert fresh.head(session_key_id(sid))[0] == 2 and verify_session(fresh, sid).ok
        _append(fresh, sid, "three")
        assert verify_session(fresh, sid).sealed == 3


def test_a_state_directory_with_every_head_in_vault_json_reads_and_goes_on(tmp_path, monkeypatch, passphrase_file):
    """Written before heads.json (tests/vault/data/format-2-state): the same file opens; its heads verify;
    an append moves a head in heads.json; the next write of vault.json takes it in."""
    home = tmp_path / "state"
    shutil.copytree(FORMAT_2_STATE, home)
    state.initialise(home)
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    out = ok("logs", "verify")
    assert "ok      20261207T184725Z-bd2363d3: 3 records" in out and "ok      20261207T184725Z-d06dff4f: 2 records" in out
    assert "vault   generation 8," in out
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        _append(vault, "20261207T184725Z-d06dff4f", "three")
        assert vault.generation()[0] == 9 and heads_path(home).exists()
        vault.set_setting("n", 1)
        assert vault.generation()[0] == 10 and not heads_path(home).exists()
    out = ok("logs", "verify")
    assert "ok      20261207T184725Z-d06dff4f: 3 records" in out and "vault   generation 10," in out


def test_list_and_search_show_the_newest_session_first(vault_home, vault, monkeypatch):
    ids = iter(["20260101T000000Z-ffffffff", "20260101T000001Z-00000000"])  # a second apart (ids sort by it)
    monkeypatch.setattr("appliance.journal.session_files.new_session_id", lambda: next(ids))
    older, newer = _session(vault, 1), _session(vault, 1)
    assert [line.split()[0] for line in ok("logs", "list").splitlines()] == [newer, older]
    assert [line.split()[0] for line in ok("logs", "search", "record 1").splitlines()[:2]] == [newer, older]


def test_a_pinned_view_reads_one_vault_until_a_write_ends_it(vault_home, vault):
    """`logs list`, `search` and `verify` read every session against the view taken at their start."""
    with vault.pinned():
        with Vault.unlock(vault_home, PASSPHRASE.encode()) as other:
            other.new_data_key("overlay/care/1")
        assert vault.key_ids() == []  # the view taken at the start
        vault.new_data_key("overlay/care/2")  # a write reads the vault as it is now, and ends the pin
        with Vault.unlock(vault_home, PASSPHRASE.encode()) as other:
            other.new_data_key("overlay/care/3")
        assert vault.key_ids() == ["overlay/care/1", "overlay/care/2", "overlay/care/3"]


def test_a_reader_meets_no_false_rollback_when_another_process_takes_the_heads_in(vault_home, vault, monkeypatch):
    """Read between a writer's new vault.json and its removal of heads.json, the old table without heads
    would be an older generation than this process saw: it reads both again instead."""
    from appliance.vault import heads_file

    sid = _session(vault, 2)
    real, calls = heads_file.read_raw, []

    def read_raw(home):
        calls.append(home)
        if len(calls) == 1:  # this reader holds vault.json's view; another process now writes vault.json
            monkeypatch.setattr(heads_file, "read_raw", real)
            with Vault.unlock(vault_home, PASSPHRASE.encode()) as other:
                other.set_setting("n", 1)
            monkeypatch.setattr(heads_file, "read_raw", read_raw)
        return real(home)

    vault.head(session_key_id(sid))  # the view, and the generation heads.json reached
    monkeypatch.setattr(heads_file, "read_raw", read_raw)
    assert vault.head(session_key_id(sid))[0] == 2 and len(calls) == 2
