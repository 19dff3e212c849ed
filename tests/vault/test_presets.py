"""Prompt presets (`appliance preset add|list|remove`): encrypted in the vault, bad input changes nothing."""

import pytest
from helpers import PASSPHRASE, ok, refused

from appliance import presets
from appliance.errors import Erased
from appliance.vault import Vault

TEXT = "You are a careful field medic.\nAnswer in three short steps.\n"


def test_add_list_remove(vault_home, tmp_path):
    source = tmp_path / "medic.txt"
    source.write_text(TEXT)
    assert "preset medic:" in ok("preset", "add", "medic", "--file", str(source))
    stored = vault_home / "presets" / "medic.preset"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert b"medic" not in stored.read_bytes() and b"careful" not in stored.read_bytes()  # encrypted, not encoded
    listing = ok("preset", "list")
    assert "medic  60 characters  You are a careful field medic." in listing and "1 presets" in listing
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as vault:
        assert presets.read(vault, "medic").text == TEXT
    ok("preset", "remove", "medic")
    assert not stored.exists() and "0 presets" in ok("preset", "list")
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as vault:
        with pytest.raises(Erased):  # crypto-erased: the key is gone, not just the file
            vault.data_key("preset/medic")
    ok("preset", "add", "medic", "--file", str(source))  # the name is free again
    assert "1 presets" in ok("preset", "list")


def _refused(home, code, reason, *args):
    return refused(home, code, reason, "preset", *args)


def test_bad_input_is_one_line_and_changes_nothing(vault_home, tmp_path):
    good, empty, binary, large = (tmp_path / n for n in ("good.txt", "empty.txt", "binary.txt", "large.txt"))
    good.write_text(TEXT)
    empty.write_text("  \n\n")
    binary.write_bytes(b"caf\xe9 au lait")
    large.write_bytes(b"x" * (presets.MAX_TEXT + 1))
    ok("preset", "add", "medic", "--file", str(good))
    assert "not a preset name" in _refused(vault_home, 2, "preset-rejected", "add", "../etc", "--file", str(good))
    assert "not a preset name" in _refused(vault_home, 2, "preset-rejected", "add", ".hidden", "--file", str(good))
    assert "is empty" in _refused(vault_home, 2, "preset-rejected", "add", "blank", "--file", str(empty))
    assert "byte 0xe9" in _refused(vault_home, 2, "preset-rejected", "add", "latin1", "--file", str(binary))
    assert "larger than" in _refused(vault_home, 2, "preset-rejected", "add", "huge", "--file", str(large))
    _refused(vault_home, 2, "usage", "add", "nofile", "--file", str(tmp_path / "missing.txt"))
    assert "preset remove medic" in _refused(vault_home, 3, "preset-exists", "add", "medic", "--file", str(good))
    _refused(vault_home, 5, "preset-not-found", "remove", "nobody")
    _refused(vault_home, 2, "preset-rejected", "remove", "a/b")


def test_a_ciphertext_renamed_to_another_preset_fails_authentication(vault_home, vault):
    presets.add(vault, "one", "first text")
    presets.add(vault, "two", "second text")
    one, two = (vault_home / "presets" / f"{n}.preset" for n in ("one", "two"))
    two.write_bytes(one.read_bytes())  # one's ciphertext under two's name: two's key cannot open it
    with pytest.raises(presets.PresetUnreadable):
        presets.read(vault, "two")
    one.unlink()
    with pytest.raises(presets.PresetUnreadable):
        presets.read(vault, "one")
    assert presets.names(vault) == ["one", "two"]
