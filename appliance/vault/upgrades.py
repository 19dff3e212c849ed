"""Older vault formats, read and rewritten in the current one: the one place that knows them.

    format 1   vault/master.json  {"format": "appliance-vault/1", "created", "kdf", "master": SEALED(KEK, master key)}
                                  or the tombstone {"format": "appliance-vault/1", "erased": TIME}
               vault/slots.json   {"format": "appliance-keyslots/1", "sealed": SEALED(master key, table)}
                                  the table as format 2's without "generation" and "written" ("files" came
                                  late: a table without it has none), its data keys in plain base64
    format 2   vault/vault.json   (`vault_file`)

Rules, in order:
1. `current(home)` reads the vault's file in whichever format is there, without a key: format 2
   wins wherever both are present (an upgrade that was interrupted after its rename).
2. `upgrade` runs at unlock, under the vault lock: a format-1 vault is opened with the passphrase
   as it was then (its bytes as given), and written as format 2 with a fresh KEK (this build's
   KDF cost, a fresh salt), a fresh master key, every data key wrapped, generation 1. Only then are
   the format-1 files removed, so a crash leaves the old vault or the new one.
3. `remove_leftovers`, run whenever a writer takes the lock: format-1 files beside a format-2 file
   are what an interrupted upgrade left (whole copies of the old keys): they are deleted.
A later format adds its reader and its step here; nothing else reads an older format.
"""

import json
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..fsutil import fsync_dir
from ..utc import now_text
from .aead import KEY_BYTES, secret, unb64, unseal, zeroize
from .disk import json_object, load_json, vault_dir, vault_lock
from .errors import KeySlotsCorrupt, VaultCorrupt, WrongPassphrase
from .kdf import derive_kek
from .vault_file import new_kek, parse_table, read_checked, read_doc, store, vault_path, wrap_data_key

MASTER_1 = "master.json"
SLOTS_1 = "slots.json"
FORMAT_1 = "appliance-vault/1"
SLOTS_FORMAT_1 = "appliance-keyslots/1"
MASTER_AD_1 = b"appliance-vault/1 master key"
SLOTS_AD_1 = b"appliance-keyslots/1 table"


def current(home: Path) -> dict:
    """The vault's file (format 2, else format 1's master.json); NoVault, VaultErased or VaultCorrupt."""
    if vault_path(home).exists() or not (vault_dir(home) / MASTER_1).exists():
        return read_doc(home)
    return _master_1(home)


def upgrade(home: Path, passphrase: bytes | bytearray, cost: dict | None = None) -> tuple[bytearray, dict] | None:
    """A format-1 vault rewritten as format 2: its KEK and KDF parameters. None if there was none to upgrade."""
    if vault_path(home).exists() or not (vault_dir(home) / MASTER_1).exists():
        return None
    with vault_lock(home):
        if vault_path(home).exists():  # another process upgraded it while this one waited
            return None
        doc = _master_1(home)
        table = _table_1(home, doc, passphrase)
        kek, kdf = new_kek(passphrase, cost)
        try:
            items = table.get("items")
            if not isinstance(items, dict) or not all(isinstance(s, dict) for s in items.values()):
                raise KeySlotsCorrupt(f"{SLOTS_1}: the sealed table has the wrong shape")
            for key_id, slot in items.items():
                slot["key"] = _wrapped(kek, key_id, slot.get("key"))
            written = now_text()
            table.update(generation=1, written=written, files=table.get("files", {}))
            store(home, kek, kdf, str(doc.get("created", written)), parse_table(vault_path(home), json.dumps(table).encode()))
            remove_leftovers(home)
        except BaseException:
            zeroize(kek)
            raise
    return kek, kdf


def remove_leftovers(home: Path) -> None:
    """Format-1 files beside a format-2 file: deleted (the caller holds the lock)."""
    if not vault_path(home).exists():
        return
    removed = False
    for name in (MASTER_1, SLOTS_1):
        try:
            (vault_dir(home) / name).unlink()
            removed = True
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(vault_dir(home))


def _master_1(home: Path) -> dict:
    return read_checked(home, vault_dir(home) / MASTER_1, FORMAT_1)


def _table_1(home: Path, doc: dict, passphrase: bytes | bytearray) -> dict:
    """Format 1's table as JSON, opened with the passphrase's bytes as given (format 1 did not normalise them)."""
    kek = derive_kek(passphrase, doc.get("kdf"))
    try:
        master = secret(unseal(kek, unb64(doc.get("master"), VaultCorrupt, f"{MASTER_1}: master"), MASTER_AD_1))
    except InvalidTag:
        raise WrongPassphrase() from None
    finally:
        zeroize(kek)
    path = vault_dir(home) / SLOTS_1
    try:
        slots = load_json(path, KeySlotsCorrupt)
        if slots.get("format") != SLOTS_FORMAT_1:
            raise KeySlotsCorrupt(f"{path}: not an {SLOTS_FORMAT_1} file")
        try:
            plain = unseal(master, unb64(slots.get("sealed"), KeySlotsCorrupt, f"{path}: sealed"), SLOTS_AD_1)
        except InvalidTag:
            raise KeySlotsCorrupt(f"{path}: failed authentication under the master key (damaged or replaced)") from None
    finally:
        zeroize(master)
    return json_object(plain, KeySlotsCorrupt, f"{path}: the sealed table")


def _wrapped(kek: bytearray, key_id: str, value: object) -> str:
    """A format-1 key (plain base64) wrapped as format 2 keeps it."""
    key = secret(unb64(value, KeySlotsCorrupt, f"{SLOTS_1}: key of {key_id}"))
    try:
        if len(key) != KEY_BYTES:
            raise KeySlotsCorrupt(f"{SLOTS_1}: key of {key_id} has the wrong length")
        return wrap_data_key(kek, key_id, key)
    finally:
        zeroize(key)
