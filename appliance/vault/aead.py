"""Key buffers, and AES-256-GCM sealing of the vault's own secrets (the master key, the key-slot table).

Rules:
- Key material lives in a `bytearray` whose pages are locked out of swap where the OS allows
  (`hardening.lock_secret`), and is overwritten in place by `zeroize` as soon as it is done with.
- Every seal draws a fresh random nonce: one key seals many times, and a counter would need state.
- A sealed value is stored as base64 of `nonce || ciphertext || tag`; a value that is not valid
  base64 raises the caller's own typed error, a wrong key or a changed byte raises `InvalidTag`.
"""

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..hardening import lock_secret

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def zeroize(buf: bytearray) -> None:
    """Overwrite a key buffer in place (same length, so no reallocation leaves the old bytes behind)."""
    buf[:] = bytes(len(buf))


def secret(data: bytes | bytearray) -> bytearray:
    """Key material in a buffer that can be zeroed, its pages locked out of swap where allowed."""
    buf = bytearray(data)
    lock_secret(buf)
    return buf


def random_key() -> bytearray:
    """A fresh data key, held only in memory until `Vault.record_data_key` (or never: a throwaway key)."""
    return secret(os.urandom(KEY_BYTES))


def derive_key(key: bytes | bytearray, info: bytes) -> bytearray:
    """A key of its own for one use of `key` (HKDF-SHA256, no salt: `key` is uniformly random), named by `info`."""
    return secret(HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(bytes(key)))


def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, error: type[Exception], what: str) -> bytes:
    if not isinstance(value, str):
        raise error(f"{what}: not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what}: not valid base64") from None


def seal(key: bytes | bytearray, plaintext: bytes | bytearray, ad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return b64(nonce + AESGCM(key).encrypt(nonce, plaintext, ad))


def unseal(key: bytes | bytearray, sealed: bytes, ad: bytes) -> bytes:
    """AES-GCM open; raises InvalidTag on a wrong key or any modified byte."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag()
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
