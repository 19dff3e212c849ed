"""The vault's folder on disk: where its files are, the lock every writer holds, bounded reads, durable writes.

    <state>/vault/vault.json    the vault: the KDF's parameters, the master key, the key-slot table  (`vault_file`)
    <state>/vault/lock          the flock of every writer
    <state>/vault/heads.json, keys/  heads moved since vault.json's write (`heads_file`), sessions' keys (`key_files`)
    (format 1's master.json and slots.json: `upgrades`)

Rules:
- Every write of a vault file holds the lock, so a temp file found beside them by whoever takes
  the lock was left by an interrupted write, and may be a whole copy of the old vault: it is
  removed then, before anything else. Every erase takes the lock, so no copy of an erased key
  survives in one.
- Every write is atomic (`fsutil.atomic_write`); one that fails raises `EnvironmentRefused` and
  leaves the old file standing.
- A read is bounded (`MAX_VAULT_FILE`) and a file that is missing, unreadable, too large or not a
  JSON object raises the caller's own typed error.
"""

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import EnvironmentRefused
from ..fsutil import atomic_write, remove_stale_temps

VAULT_DIR = "vault"
VAULT_FILE = "vault.json"
LOCK_FILE = "lock"
KEYS_DIR = "keys"  # the journal sessions' key files (`key_files`)
MAX_VAULT_FILE = 64 << 20  # a journal head is ~170 bytes of vault.json: ~400,000 sessions; a larger file is refused unread


def vault_dir(home: Path) -> Path:
    return home / VAULT_DIR


@contextmanager
def vault_lock(home: Path) -> Iterator[None]:
    """The lock every writer of a vault file holds; taking it clears what interrupted writes left."""
    vdir = vault_dir(home)
    fd = os.open(vdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        remove_stale_temps(vdir)  # the key files' too: staged here, not in keys/, whose size is the journal's
        yield
    finally:
        os.close(fd)  # closing releases the flock


def load_json(path: Path, error: type[Exception]) -> dict:
    return json_object(read_bounded(path, error), error, str(path))


def read_bounded(path: Path, error: type[Exception]) -> bytes:
    """The bytes of a vault file, at most `MAX_VAULT_FILE`; missing, unreadable or larger raise `error`."""
    raw = read_if_present(path, error)
    if raw is None:
        raise error(f"{path}: missing")
    return raw


def read_if_present(path: Path, error: type[Exception]) -> bytes | None:
    """As `read_bounded`, but None where the file is missing."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_VAULT_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"{path}: unreadable: {e.strerror}") from None
    if len(raw) > MAX_VAULT_FILE:
        raise error(f"{path}: larger than {MAX_VAULT_FILE} bytes")
    return raw


def json_object(raw: bytes, error: type[Exception], what: str) -> dict:
    """`raw` as a JSON object, else `error` naming `what`."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{what}: not a JSON object")
    return doc


def write_durable(path: Path, data: bytes, staging: Path | None = None) -> None:
    try:
        atomic_write(path, data, staging=staging)
    except OSError as e:
        raise EnvironmentRefused(f"cannot write {path} ({e.strerror}): it is unchanged") from None
