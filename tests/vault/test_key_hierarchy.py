"""master.json and the KDF: the passphrase opens the master key, its change rewraps only that, erase
leaves a tombstone; a vault written by an earlier release still opens and reads the same."""

import base64
import json
import shutil
from pathlib import Path

import pytest
from vault_setup import PASSPHRASE

from appliance.errors import Erased
from appliance.vault import Vault, VaultCorrupt, WrongPassphrase, zeroize
from appliance.vault.aead import unseal
from appliance.vault.kdf import KDF_BOUNDS, derive_kek
from appliance.vault.killswitch import WIPE_POLICY
from appliance.vault.master import unwrap_master
from appliance.vault.slots import SLOTS_AD, SlotTable

FORMAT_1 = Path(__file__).parent / "data" / "format-1"  # written by the release before the vault split


def test_right_passphrase_unlocks_and_wrong_one_is_locked(vault_home):
    # How fast an unlock is, is a benchmark row (bench/bench.py), not a timed test.
    Vault.unlock(vault_home, PASSPHRASE).zeroize()
    with pytest.raises(WrongPassphrase) as e:
        Vault.unlock(vault_home, b"wrong")
    assert e.value.exit_code == 4


def test_kdf_parameters_are_stored(vault_home):
    kdf = json.loads((vault_home / "vault" / "master.json").read_text())["kdf"]
    assert kdf["name"] in ("argon2id", "scrypt") and kdf["salt"]


@pytest.mark.parametrize("field", sorted(KDF_BOUNDS))
def test_kdf_parameters_outside_their_bounds_are_a_corrupt_vault(field):
    name = "argon2id" if field in ("iterations", "lanes", "memory_kib") else "scrypt"
    kdf = {"name": name, "salt": "AAAAAAAAAAAAAAAAAAAAAA==", "iterations": 1, "lanes": 1, "memory_kib": 8, "n": 2, "r": 1, "p": 1}
    for bad in (KDF_BOUNDS[field][1] + 1, KDF_BOUNDS[field][0] - 1, "1", 1.0, None):
        with pytest.raises(VaultCorrupt, match=field):
            derive_kek(b"x", {**kdf, field: bad})


def test_change_passphrase_rewraps_only_the_master_key(vault_home, vault):
    key = vault.new_data_key("journal/20260101T000000Z-00000000")
    slots = (vault_home / "vault" / "slots.json").read_bytes()
    created = json.loads((vault_home / "vault" / "master.json").read_text())["created"]
    Vault.change_passphrase(vault_home, PASSPHRASE, b"new passphrase")
    assert (vault_home / "vault" / "slots.json").read_bytes() == slots
    assert json.loads((vault_home / "vault" / "master.json").read_text())["created"] == created
    with pytest.raises(WrongPassphrase):
        Vault.unlock(vault_home, PASSPHRASE)
    assert Vault.unlock(vault_home, b"new passphrase").data_key("journal/20260101T000000Z-00000000") == key


def test_erase_all_then_afresh(vault_home, vault):
    vault.new_data_key("overlay/care/1")
    Vault.erase_all(vault_home)
    assert json.loads((vault_home / "vault" / "master.json").read_text()).keys() == {"format", "erased"}
    assert not (vault_home / "vault" / "slots.json").exists()
    assert Vault.state(vault_home) == "erased"
    with pytest.raises(Erased):
        Vault.unlock(vault_home, PASSPHRASE)
    fresh = Vault.create(vault_home, b"another")
    assert fresh.key_ids() == []


def test_zeroize_overwrites_in_place():
    buf = bytearray(b"secret key bytes")
    view = memoryview(buf)
    zeroize(buf)
    assert bytes(view) == bytes(16)


@pytest.fixture
def format_1(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(FORMAT_1, home / "vault")
    return home


def test_a_vault_of_the_earlier_release_opens_and_reads_the_same(format_1):
    vault = Vault.unlock(format_1, PASSPHRASE)
    try:
        assert vault.key_ids() == ["journal/20260101T000000Z-00000000", "overlay/care/1"]
        assert vault.data_key("overlay/care/1").hex() == "95afd08b730899f52cbbfcd71dba8a868a91dee83e91cc2850d100c19f9ab6af"
        assert vault.head("journal/20260101T000000Z-00000000") == (3, "ab" * 32)
        assert list(vault.erased_key_ids()) == ["overlay/care/0"]
        with pytest.raises(Erased):
            vault.data_key("overlay/care/0")
        assert vault.setting(WIPE_POLICY) is True
        assert vault.file_digests("trust/policy.json") == ("cd" * 32, "ef" * 32)
    finally:
        vault.zeroize()


def test_the_typed_table_writes_back_exactly_what_it_read(format_1):
    """The table's JSON survives parse -> to_json unchanged: a rewrite keeps the format of the earlier release."""
    master = unwrap_master(format_1, PASSPHRASE)
    try:
        sealed = json.loads((format_1 / "vault" / "slots.json").read_text())["sealed"]
        plain = json.loads(unseal(master, base64.b64decode(sealed), SLOTS_AD))
    finally:
        zeroize(master)
    assert SlotTable.parse(plain).to_json() == plain
