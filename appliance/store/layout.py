"""Paths of the store, its commit record `store/state.json`, and each version's accepted record.

Both are sealed state (`state_files`): read and written through the vault's seal, so an edit
made outside the appliance (a signer added to an accepted record, an older state put back to
undo an erase or lower the time floor) is refused with exit 3 naming the file.
"""

import re
from dataclasses import astuple, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..errors import Refused
from ..state_files import StateDoc, StateFileDamaged, StateSeal, read_sealed_state, state_bytes
from ..trust.builtin import GgufShape
from ..trust.kinds import KINDS
from ..trust.manifest import Manifest, parse_manifest
from ..trust.policy import TrustRoot
from ..utc import format_time, parse_time
from ..vault import Vault
from ..vault.sealed_state import SealedState

STORE_DIR = "store"  # under the state dir
STATE_FORMAT = "appliance-store/1"
ACCEPTED_FORMAT = "appliance-accepted/1"
STAGING_PREFIX = ".staging-"
ACCEPTED_NAME = "accepted.json"  # the signers that counted at import (a key expiring later must not unload it)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class StoreDamaged(Refused):
    pass


@dataclass(frozen=True)
class Item:
    kind: str
    active: Optional[str]  # manifest sha256 of the active version; None once every version was crypto-erased
    installed: tuple[str, ...]  # every version still in the store, in install order
    max_version: int  # the highest version ever accepted: a bundle must go above it, even after an erase
    erased: tuple[int, ...] = ()  # versions crypto-erased (overlays): why a load or rollback gets exit 6


@dataclass(frozen=True)
class AcceptedRecord:
    """A version's accepted record: what import found that the manifest alone does not say."""

    signers: tuple[str, ...]  # the pinned signers that counted
    shape: Optional[GgufShape] = (
        None  # a base's, from its GGUF header; None for other kinds, or a base imported before it was kept
    )


@dataclass(frozen=True)
class StoreState:
    floor: Optional[datetime] = None  # the newest `created` ever accepted
    overlay: Optional[str] = None  # name of the overlay the runtime loads
    items: dict[str, Item] = field(default_factory=dict)
    base: Optional[str] = None  # name of the installed base the runtime loads; None: the embedded default
    overlay_of_base: dict[str, str] = field(default_factory=dict)  # base name (or "embedded") -> its last overlay
    control: Optional[str] = None  # name of the control vector the runtime loads beside the overlay

    def with_item(self, name: str, item: Item) -> "StoreState":
        """The state with `item` recorded under `name`; which overlay and control vector are selected is unchanged."""
        return replace(self, items={**self.items, name: item})

    def selecting(self, name: str) -> "StoreState":
        """The state with item `name` the one the runtime loads, if its kind is selected at all (`trust.kinds`)."""
        selected_as = KINDS[self.items[name].kind].selected_as
        overlay = name if selected_as == "overlay" else self.overlay
        control = name if selected_as == "control" else self.control
        return replace(self, overlay=overlay, control=control)


def _sha256s(doc: StateDoc, name: str, field: str, optional: bool = False) -> tuple[str, ...]:
    values = doc.strings(field, optional)
    if not all(SHA256_HEX.fullmatch(v) for v in values):
        raise StateFileDamaged(doc.path, f"field items.{name}.{field!r} holds something that is not a SHA-256")
    return values


def _item(doc: StateDoc, name: str) -> Item:
    kind = doc.string("kind")
    if kind not in KINDS:
        raise StateFileDamaged(doc.path, f"field items.{name}.'kind' is not one of {', '.join(KINDS)}")
    installed = _sha256s(doc, name, "installed")
    active = doc.optional_string("active")
    if active is not None and active not in installed:
        raise StateFileDamaged(doc.path, f"field items.{name}.'active' is not an installed version")
    return Item(kind, active, installed, doc.integer("max_version", 1), doc.integers("erased", optional=True))


class Store:
    def __init__(self, home: Path, seal: StateSeal):
        self.home = home
        self.dir = home / STORE_DIR
        self.objects = self.dir / "objects"
        self.state_path = self.dir / "state.json"
        self.seal = seal

    @classmethod
    def unlocked(cls, vault: Vault) -> "Store":
        return cls(vault.home, SealedState(vault))

    def trust(self) -> TrustRoot:
        """The trust policy, read through the same seal."""
        return TrustRoot(self.home, self.seal)

    def object_dir(self, manifest_sha256: str) -> Path:
        return self.objects / manifest_sha256

    def staging_dirs(self) -> list[Path]:
        return sorted(self.home.glob(STAGING_PREFIX + "*"))

    def read_state(self) -> StoreState:
        doc = read_sealed_state(self.seal, self.state_path, STATE_FORMAT)
        if doc is None:
            return StoreState()
        items = {name: _item(inner, name) for name, inner in doc.objects("items").items()}
        floor_text = doc.optional_string("floor")
        try:
            floor = parse_time(floor_text) if floor_text else None
        except ValueError:
            raise StateFileDamaged(self.state_path, "field 'floor' is not a UTC time") from None
        overlay = doc.optional_string("overlay")
        if overlay is not None and (overlay not in items or items[overlay].kind != "overlay"):
            raise StateFileDamaged(self.state_path, "field 'overlay' names no installed overlay")
        base = doc.optional_string("base")
        if base is not None and (base not in items or items[base].kind != "base-model"):
            raise StateFileDamaged(self.state_path, "field 'base' names no installed base model")
        control = doc.optional_string("control")  # absent in a state written before control vectors: none
        if control is not None and (control not in items or items[control].kind != "control-vector"):
            raise StateFileDamaged(self.state_path, "field 'control' names no installed control vector")
        remembered = doc.objects("overlay_of_base") if doc.has("overlay_of_base") else {}
        overlay_of_base = {name: inner.string("overlay") for name, inner in remembered.items()}
        return StoreState(floor, overlay, items, base, overlay_of_base, control)

    def write_state(self, state: StoreState) -> None:
        doc = {
            "format": STATE_FORMAT,
            "floor": format_time(state.floor) if state.floor else None,
            "overlay": state.overlay,
            "control": state.control,
            "base": state.base,
            "overlay_of_base": {name: {"overlay": o} for name, o in sorted(state.overlay_of_base.items())},
            "items": {
                name: {
                    "kind": i.kind,
                    "active": i.active,
                    "installed": list(i.installed),
                    "max_version": i.max_version,
                    "erased": list(i.erased),
                }
                for name, i in sorted(state.items.items())
            },
        }
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.seal.write(self.state_path, state_bytes(doc))

    def read_manifest(self, manifest_sha256: str) -> Manifest:
        """The accepted manifest of an installed version; refused unless its bytes still hash to its address."""
        path = self.object_dir(manifest_sha256) / "manifest.json"
        try:
            manifest = parse_manifest(path.read_bytes())
        except (OSError, Refused) as e:
            raise StoreDamaged(f"installed manifest {manifest_sha256[:16]}: {e}") from None
        if manifest.sha256 != manifest_sha256:
            raise StoreDamaged(f"installed manifest {manifest_sha256[:16]} was modified (SHA-256 {manifest.sha256})")
        return manifest

    def write_accepted(self, manifest_sha256: str, record: AcceptedRecord, accepted: datetime) -> None:
        """Seal the record of this version's import: the pinned signers that counted, when, and a base's shape."""
        doc = {"format": ACCEPTED_FORMAT, "signers": list(record.signers), "accepted": format_time(accepted)}
        if record.shape is not None:
            doc["gguf_shape"] = list(astuple(record.shape))  # GgufShape's sizes, in its fields' order
        self.seal.write(self.object_dir(manifest_sha256) / ACCEPTED_NAME, state_bytes(doc))

    def read_accepted(self, manifest_sha256: str) -> AcceptedRecord:
        """This version's accepted record (no `gguf_shape` in one written before it was kept: None)."""
        path = self.object_dir(manifest_sha256) / ACCEPTED_NAME
        doc = read_sealed_state(self.seal, path, ACCEPTED_FORMAT)
        if doc is None:
            raise StoreDamaged(f"installed version {manifest_sha256[:16]}: {ACCEPTED_NAME} is missing")
        signers = doc.strings("signers")
        if not signers or not all(re.fullmatch(r"[0-9A-F]{40}", f) for f in signers):
            raise StateFileDamaged(path, "field 'signers' is not a list of fingerprints")
        sizes = doc.integers("gguf_shape", optional=True)
        if sizes and (len(sizes) != len(fields(GgufShape)) or min(sizes) < 0):
            raise StateFileDamaged(path, f"field 'gguf_shape' is not the {len(fields(GgufShape))} sizes of a GGUF's shape")
        return AcceptedRecord(signers, GgufShape(*sizes) if sizes else None)

    def read_signers(self, manifest_sha256: str) -> tuple[str, ...]:
        """The pinned signers that counted when this version was accepted."""
        return self.read_accepted(manifest_sha256).signers

    def forget_objects(self, manifest_sha256s: list[str]) -> list[Path]:
        """Unseal the records of these objects (the caller removes them); returns their folders."""
        folders = [self.object_dir(sha) for sha in manifest_sha256s]
        self.seal.forget(folders)
        return folders
