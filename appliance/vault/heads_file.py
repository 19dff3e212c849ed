"""`<state>/vault/heads.json`: the journal heads sealed since vault.json was last written, so that an
append rewrites a file the size of the sessions in use, not of every session ever kept.

    {"format": "appliance-vault-heads/1", "base": G,
     "heads":  base64(nonce || AES-256-GCM(heads key, {"generation", "written", "heads": {key_id: {seq, hash}}},
                                            HEADS_AD || G))}
    heads key = HKDF-SHA256(the master key of vault.json at generation G, info = HEADS_INFO)

Rules, in order:
1. vault.json's table holds the data keys (the sessions' in `key_files`) and the heads as they were at its write (generation G);
   this file holds the heads moved since, and counts on from G: each append raises the vault's
   generation by one, as a write of vault.json does (`Vault.generation`).
2. It is sealed under a key derived from vault.json's master key, which is fresh at every write of
   vault.json: it opens only beside the one vault.json it continues, never beside an older or a newer one.
3. Read beside vault.json of generation G: absent -> no heads moved since; base G -> it must open,
   else `KeySlotsCorrupt`; another base -> it continues another vault.json and counts for nothing
   here: a stale one (vault.json was written since and took its heads in, and a crash came before
   the removal, rule 4), or vault.json is an older copy put back, which its generation shows.
4. Every write of vault.json first takes these heads into its table, then removes this file: a
   crash in between leaves the new vault.json and a stale file (rule 3), old or new, never half.
What it cannot tell, as for vault.json itself: this file deleted, an older copy of it put back or
its base changed leaves a consistent vault of a lower generation, which a running appliance
refuses and the operator's noted generation shows (docs/procedures.md, section 1). It holds no key.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..fsutil import fsync_dir
from .aead import derive_key, seal, unb64, unseal
from .disk import json_object, read_if_present, vault_dir, write_durable
from .errors import KeySlotsCorrupt
from .slots import Head, parse_heads

HEADS_FILE = "heads.json"
FORMAT = "appliance-vault-heads/1"
HEADS_AD = b"appliance-vault-heads/1 base "  # followed by the base generation
HEADS_INFO = b"appliance-vault/2 heads key"


@dataclass(frozen=True)
class MovedHeads:
    """The heads moved since vault.json of generation `base` was written, and the generation they reach."""

    base: int
    generation: int
    written: str
    heads: dict[str, Head]
    raw: bytes  # the file's bytes: what a reader compares to keep this view


def heads_path(home: Path) -> Path:
    return vault_dir(home) / HEADS_FILE


def heads_key(master: bytearray) -> bytearray:
    """The key that seals this file beside the vault.json whose master key is `master` (rule 2)."""
    return derive_key(master, HEADS_INFO)


def read_raw(home: Path) -> bytes | None:
    """The file's bytes; None where there is none (a writer of vault.json may remove it at any moment)."""
    return read_if_present(heads_path(home), KeySlotsCorrupt)


def base_of(home: Path, raw: bytes) -> int:
    """The generation of the vault.json this file continues, read without a key."""
    doc = json_object(raw, KeySlotsCorrupt, str(heads_path(home)))
    base = doc.get("base")
    if doc.get("format") != FORMAT or type(base) is not int or base < 0:
        raise KeySlotsCorrupt(f"{heads_path(home)}: not an {FORMAT} file")
    return base


def opened(home: Path, raw: bytes, key: bytearray, generation: int) -> MovedHeads | None:
    """Rule 3 beside vault.json of `generation`, whose heads key is `key`."""
    path = heads_path(home)
    base = base_of(home, raw)
    if base != generation:
        return None
    doc = json_object(raw, KeySlotsCorrupt, str(path))
    try:
        plain = unseal(key, unb64(doc.get("heads"), KeySlotsCorrupt, f"{path}: heads"), HEADS_AD + str(base).encode())
    except InvalidTag:
        raise KeySlotsCorrupt(f"{path}: failed authentication beside vault.json (damaged, or from another vault)") from None
    sealed = json_object(plain, KeySlotsCorrupt, f"{path}: the sealed heads")
    moved = sealed.get("generation")
    if type(moved) is not int or moved <= base or not isinstance(sealed.get("written"), str):
        raise KeySlotsCorrupt(f"{path}: the sealed heads have the wrong shape")
    return MovedHeads(base, moved, sealed["written"], parse_heads(sealed.get("heads")), raw)


def write(home: Path, key: bytearray, base: int, generation: int, written: str, heads: dict[str, Head]) -> MovedHeads:
    """Seal `heads` as reaching `generation` beside vault.json of generation `base`; replace the file atomically."""
    sealed = {
        "generation": generation,
        "written": written,
        "heads": {i: {"seq": h.seq, "hash": h.hash} for i, h in heads.items()},
    }
    doc = {"format": FORMAT, "base": base, "heads": seal(key, json.dumps(sealed).encode(), HEADS_AD + str(base).encode())}
    raw = (json.dumps(doc) + "\n").encode()
    write_durable(heads_path(home), raw)
    return MovedHeads(base, generation, written, dict(heads), raw)


def remove(home: Path) -> None:
    """Rule 4, after vault.json took the heads in (the caller holds the lock)."""
    heads_path(home).unlink(missing_ok=True)
    fsync_dir(vault_dir(home))  # also where there was none: every write then has the same crash points
