"""The vault: passphrase -> key-encryption key -> master key -> key-slot table -> one data key per key id.

    kdf.py           passphrase -> KEK: the KDF, its parameters and their bounds
    aead.py          key buffers (zeroed, memory-locked) and AES-256-GCM sealing of the vault's secrets
    disk.py          the vault folder: its files, the lock every writer holds, bounded reads, durable writes
    vault_file.py    vault.json: the KDF's parameters, the master key under the KEK, the table under
                     the master key (all in one file: one atomic rename per change), or the erase tombstone
    slots.py         the typed key-slot table (data keys wrapped, the generation) and its one lookup
    heads_file.py    heads.json: the journal heads moved since vault.json was written (an append's one write)
    key_files.py     keys/: each journal session's data key in a file of its own, under the journal key
    upgrades.py      older vault formats, read and rewritten in the current one (the one place for migrations)
    table_view.py    the table as one process sees it: one view of vault.json and heads.json, kept, under the lock
    journal_heads.py the heads: each journal session's last sealed record, moved by its appends
    session_keys.py  the session keys: key files, the journal key, `erase logs` in one write
    vault.py         `Vault`: the vault's life (create, unlock, passphrase, erase all), data keys, settings
    errors.py        what the vault refuses with
    stream.py        chunked AES-256-GCM for large files under a data key
    sealed_state.py  state files whose digests the table seals
    killswitch.py    the kill-switch of a running appliance

Rules:
- `cryptography` does every primitive (Argon2id or scrypt, AES-256-GCM); nothing here is hand-made crypto.
- Every write of key material is atomic: temp file, fsync, rename, fsync of the directory
  (`fsutil.atomic_write`). A crash leaves the old file or the new one, never half of either.
- Keys are held in `bytearray`s and zeroed (`zeroize`) as soon as they are no longer needed.
  Python cannot promise that no other copy exists (the `cryptography` objects, the
  interpreter's own buffers); that limit is stated in docs/procedures.md.
- Parsing a vault file raises only typed errors (`VaultCorrupt`, `WrongPassphrase`, ...):
  a malformed or tampered file is a refusal, never a crash.
- Every write of the vault file draws a fresh master key and raises the generation by one
  (`slots`): a copy of the vault put back shows an older generation.
- Crypto-erase removes a data key from the key-slot table (one atomic rewrite) and
  remembers its id as erased; reading it afterwards raises `Erased` (exit 6). Erasing an overlay,
  the journal or everything, with what the store forgets, is `appliance.erase`'s.
"""

from .aead import random_key, zeroize
from .errors import KeySlotsCorrupt, NoVault, VaultCorrupt, VaultErased, VaultRekeyed, VaultRolledBack, WrongPassphrase
from .stream import CiphertextRejected, DecryptingReader, EncryptedWriter, decrypt_chunks, decrypt_views, sealed_size
from .vault import Vault

__all__ = [
    "CiphertextRejected",
    "DecryptingReader",
    "EncryptedWriter",
    "KeySlotsCorrupt",
    "NoVault",
    "Vault",
    "VaultCorrupt",
    "VaultErased",
    "VaultRekeyed",
    "VaultRolledBack",
    "WrongPassphrase",
    "decrypt_chunks",
    "decrypt_views",
    "random_key",
    "sealed_size",
    "zeroize",
]
