"""vault.json and the KDF: the passphrase opens the KEK, the KEK a master key that is fresh at every
write, the master key the table; a passphrase change or an erase leaves no old copy that opens
what is current; every write raises the generation; a vault of format 1 opens, upgraded."""

import base64
import json
import shutil
from pathlib import Path

import pytest
from helpers import PASSPHRASE, TEST_KDF, ok

from appliance import state
from appliance.errors import Erased, NotFound
from appliance.vault import (
    KeySlotsCorrupt,
    Vault,
    VaultCorrupt,
    VaultRekeyed,
    VaultRolledBack,
    WrongPassphrase,
    decrypt_chunks,
    zeroize,
)
from appliance.vault.aead import unseal
from appliance.vault.kdf import KDF_BOUNDS, derive_kek
from appliance.vault.killswitch import WIPE_POLICY
from appliance.vault.vault_file import MASTER_AD, TABLE_AD, vault_path

FORMAT_1 = Path(__file__).parent / "data" / "format-1"  # written by the release before the vault split
FORMAT_1_STATE = Path(__file__).parent / "data" / "format-1-state"  # a whole state directory, written by format 1
SESSION = "journal/20260101T000000Z-00000000"


def _doc(home) -> dict:
    return json.loads(vault_path(home).read_text())


def _splice(home, old: dict, *fields: str) -> None:
    """Put `fields` of an older vault.json into today's: the parts of an old copy an attacker may hold."""
    vault_path(home).write_text(json.dumps({**_doc(home), **{f: old[f] for f in fields}}))


def test_right_passphrase_unlocks_and_wrong_one_is_locked(vault_home):
    # How fast an unlock is, is a benchmark row (bench/bench.py), not a timed test.
    Vault.unlock(vault_home, PASSPHRASE.encode()).zeroize()
    with pytest.raises(WrongPassphrase) as e:
        Vault.unlock(vault_home, b"wrong")
    assert e.value.exit_code == 4


def test_one_file_holds_the_vault(vault_home):
    assert sorted(p.name for p in (vault_home / "vault").iterdir()) == ["lock", "vault.json"]
    doc = _doc(vault_home)
    assert doc["format"] == "appliance-vault/2" and doc["kdf"]["salt"] and doc["master"] and doc["table"]


@pytest.mark.parametrize("field", sorted(KDF_BOUNDS))
def test_kdf_parameters_outside_their_bounds_are_a_corrupt_vault(field):
    name = "argon2id" if field in ("iterations", "lanes", "memory_kib") else "scrypt"
    kdf = {"name": name, "salt": "AAAAAAAAAAAAAAAAAAAAAA==", "iterations": 1, "lanes": 1, "memory_kib": 8, "n": 2, "r": 1, "p": 1}
    for bad in (KDF_BOUNDS[field][1] + 1, KDF_BOUNDS[field][0] - 1, "1", 1.0, None):
        with pytest.raises(VaultCorrupt, match=field):
            derive_kek(b"x", {**kdf, field: bad})


def test_every_write_draws_a_fresh_master_key_and_raises_the_generation(vault_home, vault):
    before = _doc(vault_home)
    generation, _ = vault.generation()
    vault.set_setting(WIPE_POLICY, True)
    after = _doc(vault_home)
    assert vault.generation()[0] == generation + 1
    assert after["kdf"] == before["kdf"] and after["master"] != before["master"]
    _splice(vault_home, before, "table")  # the older table under today's master key: fails
    with pytest.raises(KeySlotsCorrupt):
        vault.key_ids()


def test_the_table_holds_no_data_key_in_the_clear(vault_home, vault):
    """Reading the table decodes no data key: each stays wrapped until asked for by its id."""
    key = vault.new_data_key("overlay/care/1")
    doc = _doc(vault_home)
    master = unseal(vault._kek, base64.b64decode(doc["master"]), MASTER_AD)
    plain = unseal(master, base64.b64decode(doc["table"]), TABLE_AD)
    assert bytes(key) not in plain and base64.b64encode(key) not in plain
    assert vault.data_key("overlay/care/1") == key


def test_after_a_passphrase_change_an_old_file_and_the_old_passphrase_open_nothing_current(vault_home, vault):
    kept = vault.new_data_key("overlay/care/1")
    old = _doc(vault_home)
    Vault.change_passphrase(vault_home, PASSPHRASE.encode(), b"new passphrase")
    with Vault.unlock(vault_home, b"new passphrase") as changed:
        assert changed.data_key("overlay/care/1") == kept  # the data keys stay, rewrapped
        created = changed.new_data_key(SESSION)
    new = _doc(vault_home)
    assert new["kdf"]["salt"] != old["kdf"]["salt"] and new["master"] != old["master"]
    with pytest.raises(WrongPassphrase):
        Vault.unlock(vault_home, PASSPHRASE.encode())
    with pytest.raises(VaultRekeyed):  # a running appliance with the old KEK is locked out
        vault.key_ids()
    _splice(vault_home, old, "kdf", "master")  # the old wrap with today's table
    with pytest.raises(KeySlotsCorrupt):
        Vault.unlock(vault_home, PASSPHRASE.encode())
    vault_path(vault_home).write_text(json.dumps(old))  # the whole old file: the old table, nothing made since
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as rolled_back:
        with pytest.raises(NotFound):
            rolled_back.data_key(SESSION)
    zeroize(created)


def test_an_erased_key_is_unreadable_from_an_older_table_with_the_new_passphrase(vault_home, vault):
    vault.new_data_key("overlay/care/1")
    old = _doc(vault_home)
    vault.erase(["overlay/care/1"])
    Vault.change_passphrase(vault_home, PASSPHRASE.encode(), b"new passphrase")
    for fields in (("table",), ("master", "table")):
        _splice(vault_home, old, *fields)
        with pytest.raises((KeySlotsCorrupt, WrongPassphrase)):
            Vault.unlock(vault_home, b"new passphrase")
    _splice(vault_home, old, "kdf", "master", "table")  # whole: it needs the old passphrase
    with pytest.raises(WrongPassphrase):
        Vault.unlock(vault_home, b"new passphrase")


def test_an_older_file_put_back_while_the_vault_is_open_is_refused(vault_home, vault):
    old = _doc(vault_home)
    vault.new_data_key("overlay/care/1")
    seen, _ = vault.generation()
    vault_path(vault_home).write_text(json.dumps(old))
    with pytest.raises(VaultRolledBack) as e:
        vault.key_ids()
    assert e.value.exit_code == 3 and e.value.seen == seen and e.value.generation < seen


def test_erase_all_then_afresh(vault_home, vault):
    vault.new_data_key("overlay/care/1")
    Vault.erase_all(vault_home)
    assert _doc(vault_home).keys() == {"format", "erased"}
    assert Vault.state(vault_home) == "erased"
    with pytest.raises(Erased):
        Vault.unlock(vault_home, PASSPHRASE.encode())
    fresh = Vault.create(vault_home, b"another", cost=TEST_KDF)
    assert fresh.key_ids() == [] and fresh.generation()[0] == 1


def test_zeroize_overwrites_in_place():
    buf = bytearray(b"secret key bytes")
    view = memoryview(buf)
    zeroize(buf)
    assert bytes(view) == bytes(16)


# -- format 1 (master.json + slots.json), upgraded at its first unlock ----------------------------


@pytest.fixture
def format_1(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(FORMAT_1, home / "vault")
    return home


def test_a_vault_of_format_1_opens_upgraded_and_reads_the_same(format_1):
    old_kdf = json.loads((format_1 / "vault" / "master.json").read_text())["kdf"]
    assert Vault.state(format_1) == "present"
    with Vault.unlock(format_1, PASSPHRASE.encode()) as vault:
        assert vault.key_ids() == [SESSION, "overlay/care/1"]
        assert vault.data_key("overlay/care/1").hex() == "95afd08b730899f52cbbfcd71dba8a868a91dee83e91cc2850d100c19f9ab6af"
        assert vault.head(SESSION) == (3, "ab" * 32)
        assert list(vault.erased_key_ids()) == ["overlay/care/0"]
        with pytest.raises(Erased):
            vault.data_key("overlay/care/0")
        assert vault.setting(WIPE_POLICY) is True
        assert vault.file_digests("trust/policy.json") == ("cd" * 32, "ef" * 32)
        assert vault.generation()[0] == 1
    assert sorted(p.name for p in (format_1 / "vault").iterdir()) == ["lock", "vault.json"]  # format 1's files are gone
    assert _doc(format_1)["kdf"]["salt"] != old_kdf["salt"]  # a fresh KEK, at this build's cost
    Vault.unlock(format_1, PASSPHRASE.encode()).zeroize()  # and it opens again, as format 2


def test_an_upgrade_interrupted_after_its_rename_is_finished(format_1, tmp_path):
    """Both formats present (killed between the rename and the removal): format 2 wins, format 1 is removed."""
    leftovers = {name: (format_1 / "vault" / name).read_bytes() for name in ("master.json", "slots.json")}
    Vault.unlock(format_1, PASSPHRASE.encode()).zeroize()
    for name, data in leftovers.items():
        (format_1 / "vault" / name).write_bytes(data)
    with Vault.unlock(format_1, PASSPHRASE.encode()) as vault:
        assert vault.generation()[0] == 1
        vault.set_setting(WIPE_POLICY, False)  # a writer takes the lock: the leftovers go
    assert sorted(p.name for p in (format_1 / "vault").iterdir()) == ["lock", "vault.json"]


def test_a_wrong_passphrase_leaves_a_format_1_vault_as_it_was(format_1):
    before = {p.name: p.read_bytes() for p in (format_1 / "vault").iterdir()}
    with pytest.raises(WrongPassphrase):
        Vault.unlock(format_1, b"wrong")
    assert {p.name: p.read_bytes() for p in (format_1 / "vault").iterdir() if p.name != "lock"} == before


def test_an_erased_vault_of_format_1_is_erased(format_1):
    (format_1 / "vault" / "master.json").write_text(json.dumps({"format": "appliance-vault/1", "erased": "2026-01-01T00:00:00Z"}))
    (format_1 / "vault" / "slots.json").unlink()
    assert Vault.state(format_1) == "erased"
    with pytest.raises(Erased):
        Vault.unlock(format_1, PASSPHRASE.encode())
    Vault.create(format_1, PASSPHRASE.encode(), cost=TEST_KDF).zeroize()
    assert sorted(p.name for p in (format_1 / "vault").iterdir()) == ["lock", "vault.json"]


def test_a_state_directory_of_format_1_upgrades_with_its_journal_and_files(tmp_path, monkeypatch, passphrase_file):
    """Written by format 1's code (tests/vault/data/format-1-state): the first command upgrades the vault;
    the journal session verifies against its sealed head and the chunked file decrypts under its key."""
    home = tmp_path / "state"
    shutil.copytree(FORMAT_1_STATE, home)
    state.initialise(home)
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    out = ok("logs", "verify")
    assert "ok      20261207T152342Z-da1f6fac: 2 records" in out and "vault   generation 1," in out
    assert sorted(p.name for p in (home / "vault").iterdir()) == ["lock", "vault.json"]
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        key = vault.data_key("overlay/care/1")
        path = home / "overlays" / "care" / "1" / "overlay.safetensors.enc"
        assert b"".join(decrypt_chunks(key, path, b"overlay/care/1")) == b"overlay weights " * 10
        assert vault.erased_key_ids() == {"overlay/care/0": "2026-12-07T15:23:42Z"}
