"""Passphrase -> key-encryption key (KEK): the KDF, the parameters a new vault gets, the bounds a stored set must keep.

Rules:
- Argon2id where this build of `cryptography` has it (OpenSSL >= 3.2), else scrypt. The name,
  parameters and salt are stored in the vault file, so the KEK can be derived again from them alone.
- A stored parameter set is checked before it runs: a field of the wrong type or outside
  `KDF_BOUNDS` is a corrupt vault (exit 4), because a tampered file must not make unlock eat the machine.
- The KEK is returned in a key buffer (`aead.secret`) for the caller to zero; the passphrase is
  passed through as given, so no immutable copy of it is made here.
"""

import os

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .aead import KEY_BYTES, b64, secret, unb64
from .errors import VaultCorrupt

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # builds linked against OpenSSL < 3.2 have no Argon2
    Argon2id = None  # type: ignore[assignment,misc]

# Tuned on the 2-core reference machine: about 0.1 s per unlock, 64 MiB of memory.
ARGON2ID_PARAMS = {"name": "argon2id", "iterations": 3, "lanes": 2, "memory_kib": 65536}
SCRYPT_PARAMS = {"name": "scrypt", "n": 1 << 15, "r": 8, "p": 1}
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
