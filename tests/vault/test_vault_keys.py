"""The vault library: key hierarchy, passphrase change, per-item erase, chunked file encryption."""

import json

import pytest
from vault_setup import PASSPHRASE

from appliance.errors import Erased, NotFound, Refused
from appliance.vault import CiphertextRejected, EncryptedWriter, Vault, VaultErased, WrongPassphrase, decrypt_chunks, zeroize
from appliance.vault.stream import CHUNK_BYTES, HEADER, TAG_BYTES


def test_right_passphrase_unlocks_and_wrong_one_is_locked(vault_home):
    # How fast an unlock is, is a benchmark row (bench/bench.py), not a timed test.
    Vault.unlock(vault_home, PASSPHRASE).zeroize()
    with pytest.raises(WrongPassphrase) as e:
        Vault.unlock(vault_home, b"wrong")
    assert e.value.exit_code == 4


def test_kdf_parameters_are_stored(vault_home):
    kdf = json.loads((vault_home / "vault" / "master.json").read_text())["kdf"]
    assert kdf["name"] in ("argon2id", "scrypt") and kdf["salt"]


def test_data_keys_erase_and_tombstones(vault):
    a = vault.new_data_key("overlay/care/1")
    b = vault.new_data_key("overlay/care/2")
    assert vault.data_key("overlay/care/1") == a and a != b
    with pytest.raises(Refused):
        vault.new_data_key("overlay/care/1")
    with pytest.raises(NotFound):
        vault.data_key("overlay/none/1")
    vault.erase(["overlay/care/1"])
    with pytest.raises(Erased) as e:
        vault.data_key("overlay/care/1")
    assert e.value.exit_code == 6
    assert vault.data_key("overlay/care/2") == b  # the rest still works
    with pytest.raises(Erased):
        vault.erase(["overlay/care/1"])


def test_change_passphrase_rewraps_only_the_master_key(vault_home, vault):
    key = vault.new_data_key("journal/20260101T000000Z-00000000")
    slots = (vault_home / "vault" / "slots.json").read_bytes()
    Vault.change_passphrase(vault_home, PASSPHRASE, b"new passphrase")
    assert (vault_home / "vault" / "slots.json").read_bytes() == slots
    with pytest.raises(WrongPassphrase):
        Vault.unlock(vault_home, PASSPHRASE)
    assert Vault.unlock(vault_home, b"new passphrase").data_key("journal/20260101T000000Z-00000000") == key


def test_erase_all_then_afresh(vault_home, vault):
    vault.new_data_key("overlay/care/1")
    Vault.erase_all(vault_home)
    with pytest.raises(VaultErased):
        Vault.unlock(vault_home, PASSPHRASE)
    fresh = Vault.create(vault_home, b"another")
    assert fresh.items() == []


def test_zeroize_overwrites_in_place():
    buf = bytearray(b"secret key bytes")
    view = memoryview(buf)
    zeroize(buf)
    assert bytes(view) == bytes(16)


def _decrypt(key, path, context=b"") -> bytes:
    return b"".join(decrypt_chunks(key, path, context))


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES])
def test_stream_roundtrip(tmp_path, size):
    key = bytearray(32)
    data = bytes(i % 251 for i in range(size))
    with open(tmp_path / "f.enc", "wb") as dst:
        writer = EncryptedWriter(key, dst, context=b"overlay/x/1")
        for i in range(0, size, 1000):  # fed in pieces that do not line up with the chunks
            writer.write(data[i : i + 1000])
        assert writer.close() == size
    assert _decrypt(key, tmp_path / "f.enc", context=b"overlay/x/1") == data
    assert size < 64 or data[:64] not in (tmp_path / "f.enc").read_bytes()


def _two_chunk_file(tmp_path):
    key = bytearray(b"k" * 32)
    with open(tmp_path / "f.enc", "wb") as dst:
        writer = EncryptedWriter(key, dst)
        writer.write(b"a" * (2 * CHUNK_BYTES + 10))
        writer.close()
    return key, (tmp_path / "f.enc").read_bytes()


def test_stream_detects_truncation_reordering_and_wrong_context(tmp_path):
    key, blob = _two_chunk_file(tmp_path)
    c = CHUNK_BYTES + TAG_BYTES
    h, c0, c1, rest = blob[: HEADER.size], blob[HEADER.size : HEADER.size + c], blob[HEADER.size + c : HEADER.size + 2 * c], blob[HEADER.size + 2 * c :]
    path = tmp_path / "f.enc"
    for bad in (h + c0 + c1, h + c0, h + c1 + c0 + rest, h + c0 + c1 + rest + b"x", blob[:-1]):
        path.write_bytes(bad)
        with pytest.raises(CiphertextRejected):
            _decrypt(key, path)
    path.write_bytes(blob)
    with pytest.raises(CiphertextRejected):
        _decrypt(key, path, context=b"another item")
    with pytest.raises(CiphertextRejected):
        _decrypt(bytearray(32), path)


def test_ciphertext_paths_must_stay_inside_the_state_dir(vault):
    for bad in ("/etc/passwd", "../outside"):
        with pytest.raises(Refused):
            vault.new_data_key("overlay/evil/1", files=[bad])
    with pytest.raises(Refused):  # not an item id
        vault.new_data_key("../../x")
