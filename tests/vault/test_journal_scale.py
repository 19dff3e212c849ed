"""The journal as its history grows: reading many sessions opens the vault's table once, not once a session."""

import pytest

from appliance.journal import Journal
from appliance.vault import vault_file


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
    from vault_setup import PASSPHRASE

    from appliance.vault import Vault

    assert vault.key_ids() == []
    with Vault.unlock(vault_home, PASSPHRASE) as other:
        other.new_data_key("overlay/care/1")
    assert vault.key_ids() == ["overlay/care/1"]
    vault.new_data_key("overlay/care/2")  # written over the other's table, not over the view kept before it
    assert vault.key_ids() == ["overlay/care/1", "overlay/care/2"]
