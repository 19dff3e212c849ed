"""Versioned state files: one reader for all of them, and the seal that keeps them authentic.

Every JSON file under the state directory that a decision or a provenance record reads (the trust
policy, the store's state, each version's accepted record) is read here, by these rules in order:

1. it is sealed: its bytes are what the appliance last wrote, checked by a `StateSeal` (the vault
   keeps their SHA-256 under the master key, `vault.sealed_state`), so a file edited, replaced by
   an older copy, planted or deleted outside the appliance is `StateForged`, naming it;
2. it is at most `MAX_STATE_FILE` bytes;
3. it is one JSON object (`untrusted_json`: nesting capped, no duplicate key) whose `format` is the
   one expected (the schema version);
4. each field has the type the caller asks for (`StateDoc`'s typed getters).

A broken rule 2-4 is `StateFileDamaged`, naming the file and the field. Both are refusals (exit 3)
and are raised as real checks, never `assert` (which `python -O` removes).
"""

import json
from pathlib import Path
from typing import Optional, Protocol

from .errors import Refused
from .untrusted_json import JsonRejected, load_untrusted

MAX_STATE_FILE = 4 << 20  # far above any real policy or store state; a larger file is refused unread


class StateForged(Refused):
    """A sealed state file is not the one the appliance last wrote (changed outside the appliance)."""

    def __init__(self, path: Path, how: str):
        super().__init__(f"{path} was changed outside the appliance ({how}): refused; restore it or re-initialise")
        self.path = path


class StateFileDamaged(Refused):
    """A state file is not valid for its format (size, JSON, schema version or a field's type)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


class StateSeal(Protocol):
    """What the vault offers to state owners below it: authenticated reads and writes of whole files."""

    def read(self, path: Path) -> Optional[bytes]:
        """The file's bytes if they are the sealed ones; None if it was never written; else `StateForged`."""
        ...

    def write(self, path: Path, data: bytes) -> None:
        """Replace the file atomically and seal its new bytes."""
        ...

    def forget(self, paths: list[Path]) -> None:
        """Unseal these files, and every file under these folders (the appliance is deleting them)."""
        ...


class StateDoc:
    """One JSON object of a state file, with getters that refuse a wrong type by naming the field."""

    def __init__(self, path: Path, doc: dict, where: str = ""):
        self.path, self._doc, self._where = path, doc, where

    def _fail(self, field: str, expected: str) -> StateFileDamaged:
        return StateFileDamaged(self.path, f"field {self._where}{field!r} is missing or not {expected}")

    def _get(self, field: str, types: tuple[type, ...], expected: str, optional: bool):
        value = self._doc.get(field)
        if value is None and optional:
            return None
        if type(value) not in types:
            raise self._fail(field, expected)
        return value

    def has(self, field: str) -> bool:
        return field in self._doc

    def string(self, field: str) -> str:
        return self._get(field, (str,), "a string", False)

    def optional_string(self, field: str) -> Optional[str]:
        return self._get(field, (str,), "a string", True)

    def integer(self, field: str, minimum: int) -> int:
        value = self._get(field, (int,), f"an integer >= {minimum}", False)
        if value < minimum:
            raise self._fail(field, f"an integer >= {minimum}")
        return value

    def strings(self, field: str, optional: bool = False) -> tuple[str, ...]:
        """A list of strings; an absent optional field is ()."""
        return self._list(field, str, "a list of strings", optional)

    def integers(self, field: str, optional: bool = False) -> tuple[int, ...]:
        """A list of integers; an absent optional field is ()."""
        return self._list(field, int, "a list of integers", optional)

    def _list(self, field: str, of: type, expected: str, optional: bool) -> tuple:
        if optional and field not in self._doc:
            return ()
        value = self._get(field, (list,), expected, False)
        if not all(type(v) is of for v in value):
            raise self._fail(field, expected)
        return tuple(value)

    def objects(self, field: str) -> dict[str, "StateDoc"]:
        """A JSON object whose values are objects: name -> StateDoc (fields named `field.name.x` in errors)."""
        value = self._get(field, (dict,), "an object", False)
        out = {}
        for name, inner in value.items():
            if type(inner) is not dict:
                raise self._fail(f"{field}.{name}", "an object")
            out[name] = StateDoc(self.path, inner, f"{self._where}{field}.{name}.")
        return out


def parse_state(path: Path, data: bytes, fmt: str) -> StateDoc:
    """Rules 2-3 for bytes already read (and, for sealed files, authenticated)."""
    if len(data) > MAX_STATE_FILE:
        raise StateFileDamaged(path, f"larger than {MAX_STATE_FILE} bytes")
    try:
        doc = load_untrusted(data)
    except JsonRejected as e:
        raise StateFileDamaged(path, f"not valid JSON: {e}") from None
    if type(doc) is not dict:
        raise StateFileDamaged(path, "not a JSON object")
    if doc.get("format") != fmt:
        raise StateFileDamaged(path, f"not an {fmt} file (format {str(doc.get('format'))[:40]!r})")
    return StateDoc(path, doc)


def read_sealed_state(seal: StateSeal, path: Path, fmt: str) -> Optional[StateDoc]:
    """Rules 1-3: the sealed file as a `StateDoc`, or None if the appliance never wrote it."""
    data = seal.read(path)
    return None if data is None else parse_state(path, data, fmt)


def state_bytes(doc: dict) -> bytes:
    """The one serialisation of a state file (stable, so equal states seal to equal digests)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
