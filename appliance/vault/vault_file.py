"""`<state>/vault/vault.json`: the whole vault in one file, so that every change is one atomic rename.

    {"format": "appliance-vault/2", "created": TIME,
     "kdf":    {name, parameters, salt},                                   passphrase -> KEK (`kdf`)
     "master": base64(nonce || AES-256-GCM(KEK, master key, MASTER_AD)),
     "table":  base64(nonce || AES-256-GCM(master key, table JSON, TABLE_AD))}        (`slots.SlotTable`)
    {"format": "appliance-vault/2", "erased": TIME}                                 the erase tombstone

Rules:
- The master key is fresh at every write (so at every erase and every passphrase change): 32
  random bytes that seal this one table and nothing else. A table from another copy of the file
  (a backup, a temp file, the blocks an atomic rename leaves on the medium) does not open under
  today's master key: an old copy opens only whole, and only with the passphrase of its time.
- Data keys are wrapped one by one under the KEK (associated data: their key id), so reading the
  table decodes none of them; only the one asked for is unwrapped. A passphrase change rewraps
  them under the new KEK, so a copy of the file written before it needs the old passphrase.
- The KEK is derived once per unlock and held by the `Vault`, so writes need no passphrase (an
  erase by the kill-switch included). The stored salt says which KEK a file needs: a file with
  another salt than the one unlocked was rekeyed since (`VaultRekeyed`).
- The KEK is derived from the passphrase in Unicode NFC (`kdf.normalised`).
- Reading never changes a byte: missing (`NoVault`), erased (`VaultErased`), malformed or of
  another format (`VaultCorrupt`), wrong passphrase (`WrongPassphrase`), a table that fails
  authentication or is of the wrong shape (`KeySlotsCorrupt`).
- The writers here expect the caller to hold the vault lock (`disk.vault_lock`).
- A reader may keep what it opened and ask `unchanged` before each use: the bytes in front of the
  table hold the master key's wrap, fresh at every write, so a file another writer replaced since
  never begins alike. Reading those few bytes is what lets a command open the table once, however
  many sessions it reads (a file changed in place behind the same wrap keeps the authentic view).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..utc import now_text
from .aead import KEY_BYTES, random_key, seal, secret, unb64, unseal, zeroize
from .disk import VAULT_FILE, json_object, read_bounded, vault_dir, write_durable
from .errors import KeySlotsCorrupt, NoVault, VaultCorrupt, VaultErased, VaultRekeyed, WrongPassphrase
from .kdf import derive_kek, fresh_params, normalised
from .slots import SlotTable

FORMAT = "appliance-vault/2"
MASTER_AD = b"appliance-vault/2 master key"
TABLE_AD = b"appliance-vault/2 table"
DATA_KEY_AD = b"appliance-vault/2 data key "  # followed by the key id


@dataclass(frozen=True)
class Opened:
    """vault.json as read and authenticated: its doc, its table, and the mark `unchanged` compares."""

    doc: dict
    table: SlotTable
    mark: bytes | None  # the file's bytes up to its table, the master key's wrap among them; None: not kept


def vault_path(home: Path) -> Path:
    return vault_dir(home) / VAULT_FILE


def read_doc(home: Path) -> dict:
    """vault.json as a checked dict; NoVault if absent, VaultErased if it is the erase tombstone."""
    return read_checked(home, vault_path(home), FORMAT)


def read_checked(home: Path, path: Path, fmt: str) -> dict:
    """The vault file at `path` (this format's or an older one's) as a dict of format `fmt`."""
    return _checked(home, path, _raw(home, path), fmt)


def _raw(home: Path, path: Path) -> bytes:
    if not path.exists():
        raise NoVault(home)
    return read_bounded(path, VaultCorrupt)


def _checked(home: Path, path: Path, raw: bytes, fmt: str) -> dict:
    doc = json_object(raw, VaultCorrupt, str(path))
    if doc.get("format") != fmt:
        raise VaultCorrupt(f"{path}: not an {fmt} file")
    if "erased" in doc:
        raise VaultErased(str(doc["erased"])[:40])
    return doc


def new_kek(passphrase: bytes | bytearray, cost: dict | None = None) -> tuple[bytearray, dict]:
    """A KEK for a new passphrase, with a fresh salt; `cost` (the KDF's name and parameters) defaults to this build's."""
    params = fresh_params(cost)
    return _derive(passphrase, params), params


def open_kek(home: Path, passphrase: bytes | bytearray) -> tuple[bytearray, dict]:
    """The KEK of the passphrase, checked against the stored master key; and the file it opened."""
    doc = read_doc(home)
    kek = _derive(passphrase, doc.get("kdf"))
    try:
        zeroize(unwrap_master(kek, doc))
    except InvalidTag:
        zeroize(kek)
        raise WrongPassphrase() from None
    except BaseException:
        zeroize(kek)
        raise
    return kek, doc


def load(home: Path, kek: bytearray, salt: object) -> Opened:
    """The file and its table, under the KEK with `salt`; VaultRekeyed if the file now needs another KEK."""
    raw = _raw(home, vault_path(home))
    doc = _checked(home, vault_path(home), raw, FORMAT)
    if not isinstance(doc.get("kdf"), dict) or doc["kdf"].get("salt") != salt:
        raise VaultRekeyed(vault_path(home))
    try:
        master = unwrap_master(kek, doc)
    except InvalidTag:
        raise VaultCorrupt(f"{vault_path(home)}: the master key failed authentication under the KEK") from None
    try:
        sealed = unb64(doc.get("table"), KeySlotsCorrupt, f"{vault_path(home)}: table")
        plain = unseal(master, sealed, TABLE_AD)
    except InvalidTag:
        raise KeySlotsCorrupt(f"{vault_path(home)}: the table failed authentication under its master key") from None
    finally:
        zeroize(master)
    return Opened(doc, parse_table(vault_path(home), plain), _mark(raw, doc))


def unchanged(home: Path, mark: bytes | None) -> bool:
    """Whether vault.json still begins with `mark` (from `load` or `store`): no writer replaced it since."""
    if mark is None:
        return False
    try:
        with open(vault_path(home), "rb") as f:
            return f.read(len(mark)) == mark
    except OSError:
        return False


def _mark(raw: bytes, doc: dict) -> bytes | None:
    """The bytes before the table, kept only where they hold the master key's wrap (`store` writes it first)."""
    mark = raw[: raw.find(b'"table"')]
    master = doc.get("master")
    return mark if isinstance(master, str) and f'"master": "{master}"'.encode() in mark else None


def parse_table(path: Path, plain: bytes) -> SlotTable:
    try:
        return SlotTable.parse(json.loads(plain))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeySlotsCorrupt(f"{path}: the sealed table is not valid JSON") from None
    except KeySlotsCorrupt as e:
        raise KeySlotsCorrupt(f"{path}: {e}") from None


def store(home: Path, kek: bytearray, kdf: dict, created: str, table: SlotTable) -> Opened:
    """Seal `table` under a fresh master key, wrap that under the KEK, replace vault.json atomically."""
    master = random_key()
    try:
        doc = {
            "format": FORMAT,
            "created": created,
            "kdf": kdf,
            "master": seal(kek, master, MASTER_AD),
            "table": seal(master, json.dumps(table.to_json()).encode(), TABLE_AD),
        }
    finally:
        zeroize(master)
    raw = (json.dumps(doc, indent=1) + "\n").encode()
    write_durable(vault_path(home), raw)
    return Opened(doc, table, _mark(raw, doc))


def write_tombstone(home: Path) -> str:
    """Replace vault.json by the erase tombstone; returns the time it records."""
    when = now_text()
    write_durable(vault_path(home), (json.dumps({"format": FORMAT, "erased": when}) + "\n").encode())
    return when


def wrap_data_key(kek: bytearray, key_id: str, key: bytes | bytearray) -> str:
    return seal(kek, key, DATA_KEY_AD + key_id.encode())


def unwrap_data_key(kek: bytearray, key_id: str, wrapped: str) -> bytearray:
    """The data key of `key_id` in a buffer the caller zeroes; KeySlotsCorrupt if its wrap fails."""
    try:
        key = secret(unseal(kek, unb64(wrapped, KeySlotsCorrupt, f"the key of {key_id}"), DATA_KEY_AD + key_id.encode()))
    except InvalidTag:
        raise KeySlotsCorrupt(f"the key of {key_id} failed authentication (damaged, or moved from another key id)") from None
    if len(key) != KEY_BYTES:
        zeroize(key)
        raise KeySlotsCorrupt(f"the key of {key_id} has the wrong length")
    return key


def _derive(passphrase: bytes | bytearray, params: object) -> bytearray:
    """Format 2 derives from the passphrase in NFC (`kdf.normalised`)."""
    nfc = normalised(passphrase)
    try:
        return derive_kek(nfc, params)
    finally:
        zeroize(nfc)


def unwrap_master(kek: bytearray, doc: dict) -> bytearray:
    """The master key, in a buffer the caller zeroes; InvalidTag under another KEK or if a byte changed."""
    master = secret(unseal(kek, unb64(doc.get("master"), VaultCorrupt, "vault.json: master"), MASTER_AD))
    if len(master) != KEY_BYTES:
        zeroize(master)
        raise VaultCorrupt("vault.json: the master key has the wrong length")
    return master
