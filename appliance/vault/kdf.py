"""Passphrase -> key-encryption key (KEK): the KDF, the parameters a new vault gets, the bounds a
stored set must keep; the passphrase's normal form, and how strong it looks.

Rules:
- Argon2id where this build of `cryptography` has it (OpenSSL >= 3.2), else scrypt. The name,
  parameters and salt are stored in the vault file, so the KEK can be derived again from them
  alone: a vault opens with the cost it was made with, and a test can make a cheap one
  (`Vault.create(..., cost=...)`, which the appliance never passes).
- The cost of a new KEK: Argon2id t=3, 512 MiB, 2 lanes, about 1 s on the 2-core reference
  machine (RFC 9106's second recommendation is 64 MiB: eight times cheaper per guess; LUKS2 takes
  up to 1 GiB). The memory is held only while the KEK is derived, at unlock, before a model is
  loaded. scrypt: N=2^18, r=8, p=1 (256 MiB), above OWASP's minimum of N=2^17.
- A stored parameter set is checked before it runs: a field of the wrong type or outside
  `KDF_BOUNDS` is a corrupt vault (exit 4), because a tampered file must not make unlock eat the machine.
- The passphrase is Unicode NFC (`normalised`): a typed passphrase and a file holding the same text
  in another normal form (NFD, as some editors and filesystems write it) derive the same KEK.
- The KEK is returned in a key buffer (`aead.secret`) for the caller to zero; an ASCII passphrase
  is its own NFC and is never copied into an immutable string here (other text must be decoded to
  be normalised: docs/procedures.md, section 9).
- `estimated_bits` is the strength rule `init` and `passphrase` warn by (below `WEAK_BITS`).
"""

import math
import os
import string
import unicodedata

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .aead import KEY_BYTES, b64, secret, unb64, zeroize
from .errors import VaultCorrupt

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # builds linked against OpenSSL < 3.2 have no Argon2
    Argon2id = None  # type: ignore[assignment,misc]

# Tuned on the 2-core reference machine: about 1 s per unlock, 512 MiB of memory while it runs.
ARGON2ID_PARAMS = {"name": "argon2id", "iterations": 3, "lanes": 2, "memory_kib": 512 << 10}
SCRYPT_PARAMS = {"name": "scrypt", "n": 1 << 18, "r": 8, "p": 1}
# What a stored parameter set may ask for.
KDF_BOUNDS = {"iterations": (1, 16), "lanes": (1, 16), "memory_kib": (8, 1 << 20), "n": (2, 1 << 20), "r": (1, 32), "p": (1, 16)}
KDF_FIELDS = {"argon2id": ("iterations", "lanes", "memory_kib"), "scrypt": ("n", "r", "p")}
SALT_BYTES = (8, 64)  # what a stored salt may measure; a new one is 16


def fresh_params(cost: dict | None = None) -> dict:
    """The parameters of a new KEK: `cost` (a KDF's name and parameters, else this build's default), a fresh salt."""
    params = dict(cost or (ARGON2ID_PARAMS if Argon2id is not None else SCRYPT_PARAMS))
    params["salt"] = b64(os.urandom(16))
    return params


def derive_kek(passphrase: bytes | bytearray, kdf: object) -> bytearray:
    """Run the stored KDF; parameters outside KDF_BOUNDS or of the wrong type are a corrupt vault."""
    if not isinstance(kdf, dict):
        raise VaultCorrupt("vault: kdf is not an object")
    salt = unb64(kdf.get("salt"), VaultCorrupt, "vault: kdf salt")
    name = kdf.get("name")
    if name not in KDF_FIELDS:
        raise VaultCorrupt(f"vault: unknown kdf {name!r}")
    values = {}
    for field in KDF_FIELDS[name]:
        v, (lo, hi) = kdf.get(field), KDF_BOUNDS[field]
        if type(v) is not int or not lo <= v <= hi:
            raise VaultCorrupt(f"vault: kdf {field} missing or outside [{lo}, {hi}]")
        values[field] = v
    if not SALT_BYTES[0] <= len(salt) <= SALT_BYTES[1]:
        raise VaultCorrupt("vault: kdf salt length out of bounds")
    try:
        if name == "argon2id":
            if Argon2id is None:
                raise VaultCorrupt("this build of `cryptography` has no Argon2id, which the vault needs")
            kdf_obj: Argon2id | Scrypt = Argon2id(
                salt=salt,
                length=KEY_BYTES,
                iterations=values["iterations"],
                lanes=values["lanes"],
                memory_cost=max(values["memory_kib"], 8 * values["lanes"]),
            )
        else:
            if values["n"] & (values["n"] - 1):
                raise VaultCorrupt("vault: scrypt n is not a power of two")
            kdf_obj = Scrypt(salt=salt, length=KEY_BYTES, n=values["n"], r=values["r"], p=values["p"])
        return secret(kdf_obj.derive(passphrase))  # type: ignore[arg-type]  # a bytearray is read in place
    except (ValueError, MemoryError) as e:
        raise VaultCorrupt(f"vault: kdf parameters rejected: {e}") from None


def normalised(passphrase: bytes | bytearray) -> bytearray:
    """The passphrase as UTF-8 in Unicode NFC, in a key buffer the caller zeroes (bytes that are not UTF-8: as given)."""
    if passphrase.isascii():
        return secret(passphrase)
    try:
        text = bytes(passphrase).decode("utf-8")
    except UnicodeDecodeError:
        return secret(passphrase)
    return secret(unicodedata.normalize("NFC", text).encode("utf-8"))


# The strength rule: characters x log2(the size of the character classes used), where a passphrase
# made of few distinct characters counts at most three characters per distinct one ("aaaa..." is
# weak however long). It overrates what people choose (a dictionary word counts as random letters),
# so its bar is high: about 13 characters of all four classes, 18 lowercase letters, or four words.
WEAK_BITS = 80
CLASSES = ((string.ascii_lowercase, 26), (string.ascii_uppercase, 26), (string.digits, 10), (string.punctuation + " ", 33))
OTHER_CLASS = 100  # any character outside ASCII's printable classes


def estimated_bits(passphrase: bytes | bytearray) -> float:
    """How many bits of guessing the passphrase is worth by the rule above (0 for an empty one)."""
    buf = normalised(passphrase)
    try:
        text = buf.decode("utf-8", errors="replace")
    finally:
        zeroize(buf)
    pool = sum(size for chars, size in CLASSES if any(c in chars for c in text))
    pool += OTHER_CLASS if any(not any(c in chars for chars, _ in CLASSES) for c in text) else 0
    length = min(len(text), 3 * len(set(text)))
    return length * math.log2(pool) if pool > 1 else 0.0
