"""`<state>/vault/master.json`: the master key, sealed under the key-encryption key of the passphrase.

    {"format": "appliance-vault/1", "created": TIME, "kdf": {name, parameters, salt}, "master": SEALED}
    {"format": "appliance-vault/1", "erased": TIME}                       the erase tombstone

Rules:
- The master key is 32 random bytes, AES-256-GCM sealed under the KEK (`kdf.derive_kek`) with
  associated data `MASTER_AD`; the KEK is zeroed as soon as the seal or unseal is done.
- Changing the passphrase rewrites this file only (a fresh salt, the same master key): the
  key-slot table and the data are untouched.
- The tombstone needs no passphrase: with the sealed master key gone no passphrase opens anything,
  and `Vault.create` may then start afresh.
- Reading never changes a byte: missing (`NoVault`), erased (`VaultErased`), malformed or of
  another format (`VaultCorrupt`), wrong passphrase or any modified byte (`WrongPassphrase`).
- The writers here expect the caller to hold the vault lock (`disk.vault_lock`).
"""

import json
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..utc import now_text
from .aead import KEY_BYTES, seal, secret, unb64, unseal, zeroize
from .disk import MASTER_FILE, load_json, vault_dir, write_durable
from .errors import NoVault, VaultCorrupt, VaultErased, WrongPassphrase
from .kdf import derive_kek, fresh_params

MASTER_FORMAT = "appliance-vault/1"
MASTER_AD = b"appliance-vault/1 master key"


def master_path(home: Path) -> Path:
    return vault_dir(home) / MASTER_FILE


def read_master(home: Path) -> dict:
    """master.json as a checked dict; NoVault if absent, VaultErased if it is the erase tombstone."""
    path = master_path(home)
    if not path.exists():
        raise NoVault(home)
    doc = load_json(path, VaultCorrupt)
    if doc.get("format") != MASTER_FORMAT:
        raise VaultCorrupt(f"{path}: not an {MASTER_FORMAT} file")
    if "erased" in doc:
        raise VaultErased(str(doc["erased"])[:40])
    return doc


def vault_state(home: Path) -> str:
    """'none', 'erased' or 'present' (present says nothing about the passphrase, nor whether it opens)."""
    try:
        read_master(home)
    except NoVault:
        return "none"
    except VaultErased:
        return "erased"
    except VaultCorrupt:
        return "present"
    return "present"


def write_master(home: Path, passphrase: bytes | bytearray, master: bytearray) -> None:
    """A new master.json sealing `master` under the passphrase (replaces a tombstone or an orphan)."""
    doc = {"format": MASTER_FORMAT, "created": now_text()}
    _write_sealed(home, doc, passphrase, master)


def unwrap_master(home: Path, passphrase: bytes | bytearray) -> bytearray:
    """The master key, in a buffer the caller zeroes; read-only on disk."""
    doc = read_master(home)
    sealed = unb64(doc.get("master"), VaultCorrupt, "master.json: master")
    kek = derive_kek(passphrase, doc.get("kdf"))
    try:
        master = secret(unseal(kek, sealed, MASTER_AD))
    except InvalidTag:
        raise WrongPassphrase() from None
    finally:
        zeroize(kek)
    if len(master) != KEY_BYTES:
        zeroize(master)
        raise VaultCorrupt("master.json: the master key has the wrong length")
    return master


def rewrap_master(home: Path, master: bytearray, new_passphrase: bytes | bytearray) -> None:
    """Seal the same master key under a KEK from `new_passphrase`, with a fresh salt."""
    _write_sealed(home, read_master(home), new_passphrase, master)


def write_tombstone(home: Path) -> str:
    """Replace master.json by the erase tombstone; returns the time it records."""
    when = now_text()
    write_durable(master_path(home), (json.dumps({"format": MASTER_FORMAT, "erased": when}) + "\n").encode())
    return when


def _write_sealed(home: Path, doc: dict, passphrase: bytes | bytearray, master: bytearray) -> None:
    doc["kdf"] = fresh_params()
    kek = derive_kek(passphrase, doc["kdf"])
    try:
        doc["master"] = seal(kek, master, MASTER_AD)
    finally:
        zeroize(kek)
    write_durable(master_path(home), (json.dumps(doc, indent=2) + "\n").encode())
