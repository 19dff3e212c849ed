"""The key-slot table: data keys, per-key erase and its tombstones, and the typed table (`vault.slots`)
that is checked once when read and answers "erased or not found" in one place."""

import json

import pytest
from helpers import PASSPHRASE

from appliance.errors import ApplianceError, Erased, NotFound, Refused
from appliance.vault import KeySlotsCorrupt, Vault
from appliance.vault.aead import random_key, seal
from appliance.vault.slots import Head, Slot, SlotTable
from appliance.vault.vault_file import MASTER_AD, TABLE_AD, vault_path

KEY = "A" * 80  # base64 of a wrapped key's 60 bytes (nonce, key, tag)
GOOD = {
    "generation": 7,
    "written": "2026-01-02T00:00:00Z",
    "items": {"overlay/care/1": {"key": KEY, "files": ["store/objects/x/artifacts/a"], "created": "2026-01-01T00:00:00Z"}},
    "erased": {"overlay/care/0": "2025-12-31T00:00:00Z"},
    "heads": {},
    "settings": {"kill_wipes_overlays": True},
    "files": {"trust/policy.json": ["cd" * 32]},
}


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


def test_an_erase_naming_one_unknown_key_id_erases_nothing(vault):
    vault.new_data_key("overlay/care/1")
    with pytest.raises(NotFound):
        vault.erase(["overlay/care/1", "overlay/none/1"])
    assert vault.key_ids() == ["overlay/care/1"] and vault.erased_key_ids() == {}


def test_heads_are_sealed_only_for_key_ids_with_a_key(vault):
    vault.new_data_key("journal/s1")
    vault.seal_head("journal/s1", 2, "ab" * 32)
    assert vault.head("journal/s1") == (2, "ab" * 32)
    with pytest.raises(NotFound):
        vault.seal_head("journal/s2", 1, "ab" * 32)
    vault.erase(["journal/s1"])
    assert vault.head("journal/s1") is None
    with pytest.raises(Erased):
        vault.seal_head("journal/s1", 3, "ab" * 32)


def test_ciphertext_paths_must_stay_inside_the_state_dir(vault):
    for bad in ("/etc/passwd", "../outside"):
        with pytest.raises(ApplianceError):
            vault.new_data_key("overlay/evil/1", files=[bad])
    with pytest.raises(Refused):  # not a key id
        vault.new_data_key("../../x")


# -- the typed table -------------------------------------------------------------------------


def test_the_table_parses_into_types():
    table = SlotTable.parse(GOOD)
    assert (table.generation, table.written) == (7, "2026-01-02T00:00:00Z")
    assert table.slots["overlay/care/1"] == Slot(KEY, ("store/objects/x/artifacts/a",), "2026-01-01T00:00:00Z")
    assert table.files == {"trust/policy.json": ("cd" * 32,)}
    assert SlotTable.parse({**GOOD, "heads": {"journal/s": {"seq": 1, "hash": "h"}}}).heads == {"journal/s": Head(1, "h")}
    assert SlotTable.parse(GOOD).to_json() == GOOD


def test_one_lookup_says_erased_or_not_found():
    table = SlotTable.parse(GOOD)
    assert table.entry("overlay/care/1").key == KEY
    with pytest.raises(Erased, match="2025-12-31T00:00:00Z"):
        table.entry("overlay/care/0")
    with pytest.raises(NotFound):
        table.entry("overlay/care/2")


def _slot(**change):
    return {"items": {**GOOD["items"], "overlay/care/1": {**GOOD["items"]["overlay/care/1"], **change}}}


WRONG_SHAPES = {  # id: (the change, the key id its refusal must name)
    "slot": ({"items": {"overlay/care/1": "a key"}}, "overlay/care/1"),
    "key-type": (_slot(key=12), "overlay/care/1"),
    "key-base64": (_slot(key="not base64 at all"), "overlay/care/1"),
    "key-length": (_slot(key="A" * 43 + "="), "overlay/care/1"),  # a plain key (format 1's), not a wrapped one
    "files-type": (_slot(files="store/objects/x/artifacts/a"), "overlay/care/1"),
    "file-type": (_slot(files=[1]), "overlay/care/1"),
    "created": (_slot(created=None), "overlay/care/1"),
    "key-id": ({"items": {"overlay/../care/1": GOOD["items"]["overlay/care/1"]}}, "overlay/../care/1"),
    "head": ({"heads": {"journal/s": {"seq": "1", "hash": "h"}}}, "journal/s"),
    "erased": ({"erased": {"overlay/care/0": 0}}, "overlay/care/0"),
    "digests": ({"files": {"trust/policy.json": "cd"}}, "trust/policy.json"),
}


@pytest.mark.parametrize("change, named", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_wrong_shaped_entry_is_corrupt_and_named(change, named):
    with pytest.raises(KeySlotsCorrupt) as e:
        SlotTable.parse({**GOOD, **change})
    assert repr(named) in str(e.value)
    assert e.value.exit_code == 4


@pytest.mark.parametrize(
    "doc",
    [[], {"items": {}}, {**GOOD, "settings": []}, {**GOOD, "files": []}, {**GOOD, "generation": -1}, {**GOOD, "generation": "7"}],
)
def test_a_wrong_shaped_table_is_corrupt(doc):
    with pytest.raises(KeySlotsCorrupt):
        SlotTable.parse(doc)


def _seal_table(home, kek, table: dict) -> None:
    """What a bug could have sealed: any JSON, authentic under a master key wrapped under the KEK."""
    doc, master = json.loads(vault_path(home).read_text()), random_key()
    doc.update(master=seal(kek, master, MASTER_AD), table=seal(master, json.dumps(table).encode(), TABLE_AD))
    vault_path(home).write_text(json.dumps(doc) + "\n")


def test_unlock_refuses_a_sealed_table_with_a_wrong_shaped_entry(vault_home, vault):
    """Checked once, when the table is read: not first at the use of the one part that is wrong."""
    _seal_table(vault_home, vault._kek, {**GOOD, "heads": {"overlay/care/1": {"seq": "3", "hash": "h"}}})
    with pytest.raises(KeySlotsCorrupt, match="overlay/care/1"):
        Vault.unlock(vault_home, PASSPHRASE.encode())
    with pytest.raises(KeySlotsCorrupt):
        vault.key_ids()
    _seal_table(vault_home, vault._kek, GOOD)
    assert Vault.unlock(vault_home, PASSPHRASE.encode()).key_ids() == ["overlay/care/1"]
    with pytest.raises(KeySlotsCorrupt, match="overlay/care/1"):  # GOOD's key is no wrap under this KEK
        vault.data_key("overlay/care/1")
