"""`<state>/vault/slots.json`: the key-slot table, sealed as a whole under the master key.

    {"format": "appliance-keyslots/1", "sealed": base64(nonce || AES-256-GCM(master, table))}
    table = {"items":    {key_id: {"key": base64, "files": [path, ...], "created": TIME}},
             "erased":   {key_id: TIME},
             "heads":    {key_id: {"seq": int, "hash": hex}},     the journal's last sealed record
             "settings": {name: JSON value},                        sealed, so only the passphrase changes them
             "files":    {path: [sha256, ...]}}                     digests of sealed state files (`sealed_state`)

Rules:
- The table is sealed as a whole, so the journal heads kept in it and the list of erased key ids
  are as tamper-evident as the data keys themselves.
- It is parsed and checked once per read, into `SlotTable`: authentic (we sealed it) but still
  checked, so that a bug cannot pass silently; a wrong-shaped part is `KeySlotsCorrupt` naming it.
- One lookup, `SlotTable.entry`, says for every caller whether a key id is there, was erased
  (`Erased`, exit 6, with the time) or was never there (`NotFound`, exit 5).
- Paths (a data key's ciphertext files, a sealed file's digests) are relative to the state dir.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..errors import Erased, NotFound
from .aead import KEY_BYTES, seal, unb64, unseal
from .disk import SLOTS_FILE, load_json, vault_dir, write_durable
from .errors import KeySlotsCorrupt

SLOTS_FORMAT = "appliance-keyslots/1"
SLOTS_AD = b"appliance-keyslots/1 table"
KEY_ID = re.compile(r"[a-z]+(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){1,3}")
KEY_B64 = re.compile(r"[A-Za-z0-9+/]{43}=")  # base64 of exactly KEY_BYTES bytes
# The section "items" holds the slots by key id (its name is the v1 format's).
SECTIONS = ("items", "erased", "heads", "settings")  # "files" came later: a table without it has none


@dataclass(frozen=True)
class Slot:
    """One data key (base64 until asked for: see `Vault.data_key`) and its ciphertext files."""

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
        raise NotFound(f"no such key id in the vault: {key_id}")

    def to_json(self) -> dict:
        return {
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
            raise KeySlotsCorrupt("slots.json: the sealed table has the wrong shape")
        files = doc.get("files", {})
        if not isinstance(files, dict):
            raise KeySlotsCorrupt("slots.json: the sealed file digests have the wrong shape")
        return cls(
            slots={i: _slot(i, s) for i, s in doc["items"].items()},
            erased={i: _string(t, f"the erase time of {i!r}") for i, t in doc["erased"].items()},
            heads={i: _head(i, h) for i, h in doc["heads"].items()},
            settings=dict(doc["settings"]),
            files={rel: _strings(d, f"the digests of {rel!r}") for rel, d in files.items()},
        )


def _slot(key_id: str, value: object) -> Slot:
    what = f"key slot {key_id!r}"
    if not KEY_ID.fullmatch(key_id):
        raise KeySlotsCorrupt(f"slots.json: {what} is not a valid key id")
    if not isinstance(value, dict):
        raise KeySlotsCorrupt(f"slots.json: {what} has the wrong shape")
    key = value.get("key")
    if not isinstance(key, str) or not KEY_B64.fullmatch(key):
        raise KeySlotsCorrupt(f"slots.json: {what} has no {KEY_BYTES}-byte key in base64")
    return Slot(key, _strings(value.get("files"), f"the files of {what}"), _string(value.get("created"), f"the time of {what}"))


def _head(key_id: str, value: object) -> Head:
    if not isinstance(value, dict) or type(value.get("seq")) is not int or not isinstance(value.get("hash"), str):
        raise KeySlotsCorrupt(f"slots.json: head of {key_id!r} has the wrong shape")
    return Head(value["seq"], value["hash"])


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise KeySlotsCorrupt(f"slots.json: {what} is not a string")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KeySlotsCorrupt(f"slots.json: {what} is not a list of strings")
    return tuple(value)


def slots_path(home: Path) -> Path:
    return vault_dir(home) / SLOTS_FILE


def read_table(home: Path, master: bytearray) -> SlotTable:
    """Open and parse slots.json; KeySlotsCorrupt if it is malformed, replaced or sealed by another master key."""
    path = slots_path(home)
    doc = load_json(path, KeySlotsCorrupt)
    if doc.get("format") != SLOTS_FORMAT:
        raise KeySlotsCorrupt(f"{path}: not an {SLOTS_FORMAT} file")
    sealed = unb64(doc.get("sealed"), KeySlotsCorrupt, f"{path}: sealed")
    try:
        plain = unseal(master, sealed, SLOTS_AD)
    except InvalidTag:
        raise KeySlotsCorrupt(f"{path}: failed authentication under the master key (damaged or replaced)") from None
    try:
        doc = json.loads(plain)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeySlotsCorrupt(f"{path}: the sealed table is not valid JSON") from None
    return SlotTable.parse(doc)


def write_table(home: Path, master: bytearray, table: SlotTable) -> None:
    """Seal the whole table and replace slots.json atomically (the caller holds the vault lock)."""
    doc = {"format": SLOTS_FORMAT, "sealed": seal(master, json.dumps(table.to_json()).encode(), SLOTS_AD)}
    write_durable(slots_path(home), (json.dumps(doc) + "\n").encode())
