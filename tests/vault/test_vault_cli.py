"""The CLI around the vault: locked states change nothing (exit 4, each with its reason code), init paths,
passphrase change, erase."""

import json

import pytest
from helpers import appliance, error_line, tree_digest
from vault_setup import PASSPHRASE, install_fake_overlay

from appliance.errors import Erased
from appliance.journal import Journal
from appliance.vault import Vault


def _locked(home, reason, *args):
    """`appliance ARGS` stays locked (exit 4) for the reason `reason`, and changes nothing; its error line."""
    before = tree_digest(home)
    line = error_line(appliance(*args), 4, reason)
    assert tree_digest(home) == before
    return line


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
    care = install_fake_overlay(vault_home, vault, "care", 1, b"care weights" * 100)
    other = install_fake_overlay(vault_home, vault, "other", 1, b"other weights" * 100)
    sid = _journal(vault, "kept")
    r = appliance("erase", "overlay", "care", input="wrong\n")
    last = r.stderr.splitlines()[-1]  # after the confirmation prompt (stderr too)
    assert r.returncode == 3 and last.endswith("error: confirmation did not match: nothing was erased [not-confirmed]")
    assert care.exists()
    r = appliance("erase", "overlay", "care", input="care\n")
    assert r.returncode == 0, r.stderr
    assert "destroyed: data keys of overlay/care/1" in r.stdout
    assert "proof:     decryption of overlay/care/1 fails" in r.stdout
    assert not care.exists()
    fresh = Vault.unlock(vault_home, PASSPHRASE)  # even with the right passphrase
    with pytest.raises(Erased):
        fresh.data_key("overlay/care/1")
    assert fresh.data_key("overlay/other/1") and other.exists()  # the rest still works
    assert appliance("logs", "verify", sid).returncode == 0
    error_line(appliance("erase", "overlay", "care", "--yes"), 6, "erased")


def test_erase_logs(vault_home, vault):
    sids = [_journal(vault, "one"), _journal(vault, "two")]
    overlay = install_fake_overlay(vault_home, vault, "care", 1, b"w" * 10)
    r = appliance("erase", "logs", "--yes")
    assert r.returncode == 0, r.stderr
    assert "2 journal sessions" in r.stdout and r.stdout.count("proof:") == 2
    assert not list((vault_home / "journal").glob("*.journal"))
    for sid in sids:
        error_line(appliance("logs", "show", sid), 6, "erased")
    assert Vault.unlock(vault_home, PASSPHRASE).data_key("overlay/care/1") and overlay.exists()


def test_erase_all_then_init_afresh(vault_home, vault, tmp_path):
    install_fake_overlay(vault_home, vault, "care", 1, b"w")
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
