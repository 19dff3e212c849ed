"""`<state>/vault/keys/<key id>.key`: one journal session's data key in a file of its own, so that a new
session writes one small file instead of rewriting vault.json, whose size then does not grow by a key
a session.

    {"format": "appliance-session-key/1",
     "sealed": base64(nonce || AES-256-GCM(journal key, data key || {"files", "created"} JSON, KEY_AD || key id))}
    journal key = the data key of JOURNAL_KEY_ID, wrapped under the KEK in vault.json's table

Rules, in order:
1. The file is written once, before its session is recorded (a head of seq 0 sealed beside vault.json,
   `Vault.new_data_key`), and never changed: a crash in between leaves a file no session names,
   which nothing reads and the next `erase logs` takes away with the journal key.
2. Which sessions exist is what the sealed heads say, never which files are here: a key file deleted
   is a recorded session without its key (`NotFound`: its journal file shows as an orphan); a key
   file swapped between sessions fails authentication (its key id is the associated data:
   `KeySlotsCorrupt`); an erased session's file put back opens nothing (the table's erase record wins).
3. Crypto-erase of some sessions removes their files (fsynced) before the table records the erase;
   erasing the last session drops the journal key too, so no copy of these files left on the medium
   opens after `erase logs`. A file is written through a temp file beside vault.json, not in this
   folder (searched by no one: it holds a file a session), so the temp file of an interrupted write is
   removed whenever a writer takes the lock (`disk.vault_lock`), as vault.json's own.
4. `erase logs` drops the journal key first, in one write of vault.json whatever the number of
   sessions (`Vault.erase_journal`): every file here is unreadable at that moment; the folder is
   removed after. A session made before that erase is erased with it (`erased_with_journal_key`), so
   its files, left by a crash in between, read as erased, not as orphans; a journal key made later
   first removes what such a crash left here.
"""

import json
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..fsutil import fsync_dir
from .aead import KEY_BYTES, seal, secret, unb64, unseal, zeroize
from .disk import KEYS_DIR, json_object, read_if_present, vault_dir, write_durable
from .errors import KeySlotsCorrupt

FORMAT = "appliance-session-key/1"
KEY_AD = b"appliance-session-key/1 "  # followed by the key id
JOURNAL_KEY_ID = "vault/journal-key"  # the table's slot of the key these files are sealed under
FILED = "journal/"  # key ids whose data key lives in a file of its own
MADE = re.compile(r"journal/(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z-[0-9a-f]{8}")  # a session id starts with its UTC second


def keys_dir(home: Path) -> Path:
    return vault_dir(home) / KEYS_DIR


def key_path(home: Path, key_id: str) -> Path:
    return keys_dir(home) / (key_id.replace("/", "+") + ".key")


def write(home: Path, journal_key: bytearray, key_id: str, key: bytearray, files: tuple[str, ...], created: str) -> None:
    """Seal `key` under the journal key and write it atomically (rule 1; the caller holds the lock)."""
    keys_dir(home).mkdir(mode=0o700, exist_ok=True)
    plain = secret(bytes(key) + json.dumps({"files": list(files), "created": created}).encode())
    try:
        doc = {"format": FORMAT, "sealed": seal(journal_key, plain, KEY_AD + key_id.encode())}
    finally:
        zeroize(plain)
    write_durable(key_path(home, key_id), (json.dumps(doc) + "\n").encode(), staging=vault_dir(home))


def read(home: Path, journal_key: bytearray, key_id: str) -> tuple[bytearray, tuple[str, ...]] | None:
    """The data key (a buffer the caller zeroes) and its ciphertext files; None where the file is missing."""
    path = key_path(home, key_id)
    raw = read_if_present(path, KeySlotsCorrupt)
    if raw is None:
        return None
    doc = json_object(raw, KeySlotsCorrupt, str(path))
    if doc.get("format") != FORMAT:
        raise KeySlotsCorrupt(f"{path}: not an {FORMAT} file")
    try:
        plain = secret(unseal(journal_key, unb64(doc.get("sealed"), KeySlotsCorrupt, str(path)), KEY_AD + key_id.encode()))
    except InvalidTag:
        raise KeySlotsCorrupt(f"{path}: failed authentication (damaged, from another session or another vault)") from None
    try:
        meta = json_object(bytes(plain[KEY_BYTES:]), KeySlotsCorrupt, f"{path}: the sealed record")
        files = meta.get("files")
        if len(plain) < KEY_BYTES or not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise KeySlotsCorrupt(f"{path}: the sealed record has the wrong shape")
        return secret(plain[:KEY_BYTES]), tuple(files)
    finally:
        zeroize(plain)


def erased_with_journal_key(key_id: str, erased: dict[str, str]) -> str | None:
    """Rule 4: the time of the last erase of the journal key where `key_id` is a session made before it; else None.
    (Made is the UTC second its id starts with: a clock set back between the two makes it an orphan instead.)"""
    when, made = erased.get(JOURNAL_KEY_ID), MADE.fullmatch(key_id)
    if when is None or made is None:
        return None
    y, mo, d, h, mi, sec = made.groups()
    return when if f"{y}-{mo}-{d}T{h}:{mi}:{sec}Z" <= when else None


def remove(home: Path, key_ids: list[str]) -> None:
    """Rule 3: the files of these key ids gone, durably (the caller holds the lock)."""
    for key_id in key_ids:
        try:
            os.unlink(key_path(home, key_id))
        except FileNotFoundError:
            pass
    if key_ids and keys_dir(home).is_dir():
        fsync_dir(keys_dir(home))
