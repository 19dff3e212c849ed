"""The vault: passphrase -> key-encryption key -> master key -> one data key per item.

Rules:
- `cryptography` does every primitive (Argon2id or scrypt, AES-256-GCM); nothing here is hand-made crypto.
- Every write of key material is atomic: temp file, fsync, rename, fsync of the directory
  (`fsutil.atomic_write`). A crash leaves the old file or the new one, never half of either.
- Keys are held in `bytearray`s and zeroed (`zeroize`) as soon as they are no longer needed.
  Python cannot promise that no other copy exists (the `cryptography` objects, the
  interpreter's own buffers); that limit is stated in docs/procedures.md.
- Parsing a vault file raises only typed errors (`VaultCorrupt`, `WrongPassphrase`, ...):
  a malformed or tampered file is a refusal, never a crash.
- Crypto-erase removes an item's data key from the key-slot table (one atomic rewrite) and
  remembers its id as erased; reading it afterwards raises `Erased` (exit 6).
"""

from .keys import (
    KeySlotsCorrupt,
    NoVault,
    Vault,
    VaultCorrupt,
    VaultErased,
    WrongPassphrase,
    random_key,
    zeroize,
)
from .stream import CiphertextRejected, EncryptedWriter, decrypt_chunks

__all__ = [
    "CiphertextRejected",
    "EncryptedWriter",
    "KeySlotsCorrupt",
    "NoVault",
    "Vault",
    "VaultCorrupt",
    "VaultErased",
    "WrongPassphrase",
    "decrypt_chunks",
    "random_key",
    "zeroize",
]
