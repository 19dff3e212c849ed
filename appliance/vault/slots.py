"""The key-slot table: what the vault file seals (`vault_file`), typed, and checked once per read.

    {"generation": int, "written": TIME,            writes of the vault file so far, and the last one's time
     "items":    {key_id: {"key": WRAPPED, "files": [path, ...], "created": TIME}},
     "erased":   {key_id: TIME},
     "heads":    {key_id: {"seq": int, "hash": hex}},     the journal's last sealed record
     "settings": {name: JSON value},                        sealed, so only the passphrase changes them
     "files":    {path: [sha256, ...]}}                     digests of sealed state files (`sealed_state`)

    WRAPPED = base64(nonce || AES-256-GCM(KEK, data key, key id))         (`vault_file.wrap_data_key`)

Rules:
- The table is sealed as a whole, so the journal heads kept in it, the list of erased key ids and
  the generation are as tamper-evident as the data keys themselves.
- The generation counts every write of the vault file: a copy put back has a lower one than the
  vault had (`Vault` refuses a generation lower than one it has seen; the operator compares it
  with the one noted offline, docs/procedures.md section 1).
- Data keys stay wrapped in the table: parsing it decodes none of them.
- It is parsed and checked once per read, into `SlotTable`: authentic (we sealed it) but still
  checked, so that a bug cannot pass silently; a wrong-shaped part is `KeySlotsCorrupt` naming it.
- One lookup, `SlotTable.entry`, says for every caller whether a key id is there, was erased
  (`Erased`, exit 6, with the time) or was never there (`NotFound`, exit 5).
- Paths (a data key's ciphertext files, a sealed file's digests) are relative to the state dir.
"""

import copy
import re
from dataclasses import dataclass, field

from ..errors import Erased, NotFound
from .aead import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from .errors import KeySlotsCorrupt
from .key_files import erased_with_journal_key

KEY_ID = re.compile(r"[a-z]+(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){1,3}")
WRAPPED_B64 = re.compile(f"[A-Za-z0-9+/]{{{(NONCE_BYTES + KEY_BYTES + TAG_BYTES) * 4 // 3}}}")  # 60 bytes: no padding
# The section "items" holds the slots by key id (its name is format 1's).
SECTIONS = ("items", "erased", "heads", "settings", "files")


@dataclass(frozen=True)
class Slot:
    """One data key, wrapped until asked for (`Vault.data_key`), and its ciphertext files."""

    key: str
    files: tuple[str, ...]
    created: str


@dataclass(frozen=True)
class Head:
    """The last journal record sealed for one session: its sequence number and the hash of its frame."""

    seq: int
    hash: str


@dataclass
class SlotTable:
    """The decrypted table; changed in place inside `Vault._table` and sealed again as a whole."""

    generation: int = 0
    written: str = ""
    slots: dict[str, Slot] = field(default_factory=dict)
    erased: dict[str, str] = field(default_factory=dict)  # key id -> UTC time of its erase
    heads: dict[str, Head] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def entry(self, key_id: str) -> Slot:
        """The slot of `key_id`; Erased if it was crypto-erased, NotFound if it never was here."""
        slot = self.slots.get(key_id)
        if slot is not None:
            return slot
        if key_id in self.erased:
            raise Erased(f"{key_id} was crypto-erased at {self.erased[key_id]}: its data key is gone")
        when = erased_with_journal_key(key_id, self.erased)
        if when is not None:
            raise Erased(f"{key_id} was crypto-erased at {when} with the journal key (`erase logs`): its data key is gone")
        raise NotFound(f"no such key id in the vault: {key_id}")

    def copy(self) -> "SlotTable":
        """A table to change (`Vault._table`) while the one read stays as it was: a failed change leaves it whole."""
        return SlotTable(
            self.generation, self.written, dict(self.slots), dict(self.erased), dict(self.heads),
            copy.deepcopy(self.settings), dict(self.files),
        )  # fmt: skip

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "written": self.written,
            "items": {i: {"key": s.key, "files": list(s.files), "created": s.created} for i, s in self.slots.items()},
            "erased": dict(self.erased),
            "heads": {i: {"seq": h.seq, "hash": h.hash} for i, h in self.heads.items()},
            "settings": dict(self.settings),
            "files": {rel: list(digests) for rel, digests in self.files.items()},
        }

    @classmethod
    def parse(cls, doc: object) -> "SlotTable":
        """The table from its JSON; KeySlotsCorrupt naming the first part of the wrong shape."""
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), dict) for k in SECTIONS):
            raise KeySlotsCorrupt("the sealed table has the wrong shape")
        generation = doc.get("generation")
        if type(generation) is not int or generation < 0:
            raise KeySlotsCorrupt("the sealed table's generation is not a count")
        return cls(
            generation=generation,
            written=_string(doc.get("written"), "the time of the last write"),
            slots={i: _slot(i, s) for i, s in doc["items"].items()},
            erased={i: _string(t, f"the erase time of {i!r}") for i, t in doc["erased"].items()},
            heads=parse_heads(doc["heads"]),
            settings=dict(doc["settings"]),
            files={rel: _strings(d, f"the digests of {rel!r}") for rel, d in doc["files"].items()},
        )


def _slot(key_id: str, value: object) -> Slot:
    what = f"key slot {key_id!r}"
    if not KEY_ID.fullmatch(key_id):
        raise KeySlotsCorrupt(f"{what} is not a valid key id")
    if not isinstance(value, dict):
        raise KeySlotsCorrupt(f"{what} has the wrong shape")
    key = value.get("key")
    if not isinstance(key, str) or not WRAPPED_B64.fullmatch(key):
        raise KeySlotsCorrupt(f"{what} has no wrapped {KEY_BYTES}-byte key")
    return Slot(key, _strings(value.get("files"), f"the files of {what}"), _string(value.get("created"), f"the time of {what}"))


def parse_heads(doc: object) -> dict[str, Head]:
    """Heads by key id (the table's section, or `heads_file`'s); KeySlotsCorrupt naming a wrong-shaped one."""
    if not isinstance(doc, dict):
        raise KeySlotsCorrupt("the heads have the wrong shape")
    return {i: _head(i, h) for i, h in doc.items()}


def _head(key_id: str, value: object) -> Head:
    if not isinstance(value, dict) or type(value.get("seq")) is not int or not isinstance(value.get("hash"), str):
        raise KeySlotsCorrupt(f"head of {key_id!r} has the wrong shape")
    return Head(value["seq"], value["hash"])


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise KeySlotsCorrupt(f"{what} is not a string")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KeySlotsCorrupt(f"{what} is not a list of strings")
    return tuple(value)
