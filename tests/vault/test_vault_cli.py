"""The CLI around the vault: locked states change nothing (exit 4, each with its reason code), init paths,
passphrase change, erase."""

import json

import pytest
from helpers import PASSPHRASE, appliance, error_line, install_demo_overlay, refused

from appliance.errors import Erased
from appliance.journal import Journal
from appliance.vault import Vault


def _locked(home, reason, *args):
    """`appliance ARGS` stays locked (exit 4) for the reason `reason`, and changes nothing; its error line."""
    return refused(home, 4, reason, *args)


@pytest.mark.parametrize("command", [("logs", "list"), ("ask", "hello", "--max-tokens", "1")])
def test_wrong_passphrase_exit_4_nothing_changed(vault_home, tmp_path, command):
    (tmp_path / "wrong").write_text("not it\n")
    _locked(vault_home, "wrong-passphrase", *command, "--passphrase-file", str(tmp_path / "wrong"))


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("flip a byte of the sealed table", "key-slots-corrupt"),
        ("not JSON", "vault-corrupt"),
        ("a tampered KDF cost", "vault-corrupt"),
    ],
)
def test_corrupted_vault_file_exit_4_nothing_changed(vault_home, damage, reason):
    path = vault_home / "vault" / "vault.json"
    doc = json.loads(path.read_text())
    if damage == "not JSON":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "a tampered KDF cost":
        doc["kdf"]["memory_kib"] = 1 << 40  # must be refused, not run
        path.write_text(json.dumps(doc))
    else:
        doc["table"] = doc["table"][:40] + ("A" if doc["table"][40] != "A" else "B") + doc["table"][41:]
        path.write_text(json.dumps(doc))
    line = _locked(vault_home, reason, "logs", "list")
    assert "vault.json" in line or "memory_kib" in line


def test_missing_vault_exit_4(home, passphrase_file):
    from appliance import state

    state.initialise(home)
    assert "appliance init" in _locked(home, "no-vault", "logs", "list")


def test_no_passphrase_source_is_locked_not_a_hang(vault_home, monkeypatch):
    monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE")
    _locked(vault_home, "no-passphrase", "logs", "list")


def test_init_paths(home, tmp_path, monkeypatch):
    monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE", raising=False)
    r = appliance("init")  # no terminal, no passphrase file: refused before anything is created
    error_line(r, 2, "usage")
    assert not home.exists()
    r = appliance("init", "--if-needed")  # what ./run does: state only, a note, exit 0
    assert r.returncode == 0 and "no vault yet" in r.stderr
    assert Vault.state(home) == "none"
    (tmp_path / "pw").write_text("first\n")
    r = appliance("init", "--passphrase-file", str(tmp_path / "pw"))
    assert r.returncode == 0 and "vault:   created" in r.stdout
    Vault.unlock(home, b"first").zeroize()
    r = appliance("init", "--if-needed")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_passphrase_change(vault_home, tmp_path):
    (tmp_path / "new").write_text("brand new\n")
    r = appliance("passphrase", "--new-passphrase-file", str(tmp_path / "new"))
    assert r.returncode == 0, r.stderr
    _locked(vault_home, "wrong-passphrase", "logs", "list")  # the old passphrase (from the env) no longer opens it
    assert appliance("logs", "list", "--passphrase-file", str(tmp_path / "new")).returncode == 0


def _journal(vault, text):
    j = Journal.create(vault)
    j.append("message", role="user", text=text)
    j.close()
    return j.session_id


def test_erase_overlay(vault_home, vault):
    key_id, care = install_demo_overlay(vault)
    name = key_id.split("/")[1]
    other = vault.new_data_key("other/1")  # any other key of the vault
    sid = _journal(vault, "kept")
    r = appliance("erase", "overlay", name, input="wrong\n")
    last = r.stderr.splitlines()[-1]  # after the confirmation prompt (stderr too)
    assert r.returncode == 3 and last.endswith("error: confirmation did not match: nothing was erased [not-confirmed]")
    assert all(path.exists() for path in care)
    r = appliance("erase", "overlay", name, input=f"{name}\n")
    assert r.returncode == 0, r.stderr
    assert f"destroyed: data keys of {key_id}" in r.stdout
    assert f"proof:     decryption of {key_id} fails" in r.stdout
    assert not any(path.exists() for path in care)
    fresh = Vault.unlock(vault_home, PASSPHRASE.encode())  # even with the right passphrase
    with pytest.raises(Erased):
        fresh.data_key(key_id)
    assert fresh.data_key("other/1") == other  # the rest still works
    assert appliance("logs", "verify", sid).returncode == 0
    error_line(appliance("erase", "overlay", name, "--yes"), 6, "erased")


def test_erase_logs(vault_home, vault):
    key_id, overlay = install_demo_overlay(vault)  # its trust changes are journalled: a session too
    sids = [_journal(vault, "one"), _journal(vault, "two")]
    r = appliance("erase", "logs", "--yes")
    assert r.returncode == 0, r.stderr
    # The journal key, under which every session's key is sealed, and the newest session's key as a sample.
    assert "3 journal sessions" in r.stdout and r.stdout.count("proof:") == 2 and "proof:     decryption of journal/" in r.stdout
    assert not list((vault_home / "journal").glob("*.journal"))
    for sid in sids:
        error_line(appliance("logs", "show", sid), 6, "erased")
    assert Vault.unlock(vault_home, PASSPHRASE.encode()).data_key(key_id) and all(path.exists() for path in overlay)


def test_erase_all_then_init_afresh(vault_home, vault, tmp_path):
    install_demo_overlay(vault)
    sid = _journal(vault, "gone")
    r = appliance("erase", "all", input="erase all\n")
    assert r.returncode == 0, r.stderr
    assert "master key slot" in r.stdout and "proof:     unlocking fails" in r.stdout
    error_line(appliance("logs", "show", sid), 6, "vault-erased")
    error_line(appliance("logs", "list"), 6, "vault-erased")
    (tmp_path / "pw2").write_text("after the wipe\n")
    r = appliance("init", "--passphrase-file", str(tmp_path / "pw2"))
    assert r.returncode == 0 and "replacing the erased one" in r.stdout
    assert Vault.unlock(vault_home, b"after the wipe").key_ids() == []
