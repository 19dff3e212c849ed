"""Paths of the store and its commit record, `store/state.json`."""

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..errors import Refused
from ..fsutil import atomic_write
from ..trust.manifest import Manifest, format_time, parse_manifest, parse_time

STATE_FORMAT = "appliance-store/1"
STAGING_PREFIX = ".staging-"
ACCEPTED_NAME = "accepted.json"  # the signers that counted at import (a key expiring later must not unload it)


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
class StoreState:
    floor: Optional[datetime] = None  # the newest `created` ever accepted
    overlay: Optional[str] = None  # name of the overlay the runtime loads
    items: dict[str, Item] = field(default_factory=dict)

    def with_item(self, name: str, item: Item) -> "StoreState":
        overlay = name if item.kind == "overlay" else self.overlay
        return replace(self, overlay=overlay, items={**self.items, name: item})


class Store:
    def __init__(self, home: Path):
        self.home = home
        self.dir = home / "store"
        self.objects = self.dir / "objects"
        self.state_path = self.dir / "state.json"

    def object_dir(self, manifest_sha256: str) -> Path:
        return self.objects / manifest_sha256

    def staging_dirs(self) -> list[Path]:
        return sorted(self.home.glob(STAGING_PREFIX + "*"))

    def read_state(self) -> StoreState:
        if not self.state_path.is_file():
            return StoreState()
        try:
            doc = json.loads(self.state_path.read_bytes())
            assert doc["format"] == STATE_FORMAT
            items = {
                name: Item(i["kind"], i["active"], tuple(i["installed"]), int(i["max_version"]), tuple(i.get("erased", ())))
                for name, i in doc["items"].items()
            }
            floor = parse_time(doc["floor"]) if doc["floor"] else None
            return StoreState(floor, doc["overlay"], items)
        except Exception:  # any damage: refuse rather than guess what is installed
            raise StoreDamaged(f"{self.state_path} is damaged") from None

    def write_state(self, state: StoreState) -> None:
        doc = {
            "format": STATE_FORMAT,
            "floor": format_time(state.floor) if state.floor else None,
            "overlay": state.overlay,
            "items": {
                name: {"kind": i.kind, "active": i.active, "installed": list(i.installed), "max_version": i.max_version,
                       "erased": list(i.erased)}
                for name, i in sorted(state.items.items())
            },
        }
        self.dir.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self.state_path, (json.dumps(doc, indent=2) + "\n").encode())

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

    def read_signers(self, manifest_sha256: str) -> tuple[str, ...]:
        """The pinned signers that counted when this version was accepted."""
        try:
            return tuple(json.loads((self.object_dir(manifest_sha256) / ACCEPTED_NAME).read_bytes())["signers"])
        except Exception:
            raise StoreDamaged(f"installed version {manifest_sha256[:16]}: {ACCEPTED_NAME} is damaged") from None
