"""The passphrase: the KDF cost a new vault gets, Unicode NFC (a typed passphrase and a file holding
the same text in NFD open the same vault), and the strength rule `init` and `passphrase` warn by."""

import json
import unicodedata

import pytest
from helpers import TEST_KDF, appliance, ok

from appliance import state
from appliance.vault import Vault, WrongPassphrase
from appliance.vault.kdf import ARGON2ID_PARAMS, SCRYPT_PARAMS, WEAK_BITS, Argon2id, estimated_bits
from appliance.vault.vault_file import vault_path

TEXT = "Grüße aus Köln, café crème"
NFC, NFD = (unicodedata.normalize(form, TEXT).encode() for form in ("NFC", "NFD"))


@pytest.mark.parametrize("weak", ["password", "Password1!", "Tr0ub4dor&3", "a" * 40, "abcabcabcabcabcabcabc", "first"])
def test_weak_passphrases_are_below_the_bar(weak):
    assert estimated_bits(weak.encode()) < WEAK_BITS


@pytest.mark.parametrize("strong", ["correct horse battery staple", "kQ8#mZ2!pL9@xR4vT", TEXT, "qwhzmvkdplrtxsbnfg"])
def test_long_or_varied_passphrases_pass(strong):
    assert estimated_bits(strong.encode()) >= WEAK_BITS


def test_a_new_vault_gets_the_product_cost(home):
    """About 1 s on the reference machine; the stored parameters are what every later unlock runs."""
    assert ARGON2ID_PARAMS["memory_kib"] >= 512 << 10 and SCRYPT_PARAMS["n"] >= 1 << 17  # OWASP's scrypt minimum
    Vault.create(home, b"correct horse battery staple").zeroize()
    kdf = json.loads(vault_path(home).read_text())["kdf"]
    assert {k: v for k, v in kdf.items() if k != "salt"} == (ARGON2ID_PARAMS if Argon2id is not None else SCRYPT_PARAMS)


def test_the_same_text_in_nfc_or_nfd_opens_the_vault(home, tmp_path, monkeypatch):
    assert NFC != NFD
    state.initialise(home)
    Vault.create(home, NFC, cost=TEST_KDF).zeroize()
    Vault.unlock(home, NFD).zeroize()
    with pytest.raises(WrongPassphrase):
        Vault.unlock(home, NFC[:-1])
    (tmp_path / "nfd").write_bytes(NFD + b"\n")  # as an editor on another system may save it
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(tmp_path / "nfd"))
    ok("logs", "list")


def test_init_and_passphrase_warn_of_a_weak_passphrase(home, tmp_path, monkeypatch):
    monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE", raising=False)
    (tmp_path / "weak").write_text("Password1!\n")
    (tmp_path / "strong").write_text("correct horse battery staple\n")
    r = appliance("init", "--passphrase-file", str(tmp_path / "weak"))
    assert r.returncode == 0, r.stderr
    assert "warning: this passphrase looks weak (about 66 bits" in r.stderr
    r = appliance("passphrase", "--passphrase-file", str(tmp_path / "weak"), "--new-passphrase-file", str(tmp_path / "strong"))
    assert r.returncode == 0 and "weak" not in r.stderr, r.stderr
    r = appliance("passphrase", "--passphrase-file", str(tmp_path / "strong"), "--new-passphrase-file", str(tmp_path / "weak"))
    assert r.returncode == 0 and "warning: this passphrase looks weak" in r.stderr
