"""Which installed image version runs: list them, use one, roll back.

Rules, in order, for `use` and `rollback`:
1. the image item is the one named, or the only item of kind `image` in the store;
2. the version chosen is installed (a version never imported, or removed, is not found);
3. it is re-verified in full before it is chosen (every artifact's SHA-256 and the image rules,
   `store.active.verify_version`): a layout damaged in the store is refused;
4. it is loaded into container storage and tagged `active` when skopeo is here (`storage`), and
   only then does `store/state.json` name it active: a refused or failed switch changes nothing.

Switching versions touches nothing else in the state directory: the vault, the journal, the
overlays and the trust store are the same for every image version.
"""

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..errors import NotFound, UsageError
from ..state import require_initialised
from ..store.active import verify_version
from ..store.layout import Store
from ..trust.image_rules import ImageRecord, image_record
from ..trust.kinds import IMAGE
from ..vault import Vault
from . import storage


@dataclass(frozen=True)
class ImageVersion:
    version: int
    manifest_sha256: str
    record: ImageRecord
    created: datetime
    expires: datetime
    active: bool


@dataclass(frozen=True)
class Switch:
    name: str
    old: int
    new: int
    layout: Path
    loaded: bool  # False: skopeo is not here, `storage.commands_text` says how to load it


def image_name(store: Store, name: Optional[str]) -> str:
    """Rule 1."""
    images = sorted(n for n, item in store.read_state().items.items() if item.kind == IMAGE.name)
    if name is not None:
        if name not in images:
            raise NotFound(f"no image named {name} is installed")
        return name
    if not images:
        raise NotFound("no image is installed: import a signed image bundle first (appliance update import FILE)")
    if len(images) > 1:
        raise UsageError(f"several images are installed ({', '.join(images)}): name one with --name")
    return images[0]


def layout_dir(store: Store, manifest_sha256: str) -> Path:
    """Where an installed version's verified `dir:` layout lives."""
    return store.object_dir(manifest_sha256) / "artifacts"


def list_images(vault: Vault, name: Optional[str] = None) -> tuple[str, list[ImageVersion]]:
    require_initialised(vault.home)
    store = Store.unlocked(vault)
    name = image_name(store, name)
    item = store.read_state().items[name]
    versions = []
    for sha in item.installed:
        m = store.read_manifest(sha)
        versions.append(ImageVersion(m.version, sha, image_record(m), m.created, m.expires, sha == item.active))
    return name, sorted(versions, key=lambda v: v.version)


def _switch(vault: Vault, store: Store, name: str, sha: str) -> Switch:
    """Rules 3 and 4 for one installed version."""
    state = store.read_state()
    item = state.items[name]
    old = store.read_manifest(item.active).version if item.active else 0
    manifest, _ = verify_version(store, sha, vault, base=None)  # an image binds to no base: rule 3 checks its layout
    layout = layout_dir(store, sha)
    loaded = storage.load(layout, name, manifest.version)
    store.write_state(state.with_item(name, replace(item, active=sha)))
    return Switch(name, old, manifest.version, layout, loaded)


def use_image(vault: Vault, version: int, name: Optional[str] = None) -> Switch:
    """Make VERSION of the image the one that runs (up or down: the operator's choice among installed versions)."""
    require_initialised(vault.home)
    store = Store.unlocked(vault)
    name = image_name(store, name)
    found = [sha for sha in store.read_state().items[name].installed if store.read_manifest(sha).version == version]
    if not found:
        raise NotFound(f"{name} v{version} is not installed")
    return _switch(vault, store, name, found[0])


def rollback_image(vault: Vault, name: Optional[str] = None) -> Switch:
    """Make the newest installed version below the active one the one that runs."""
    require_initialised(vault.home)
    store = Store.unlocked(vault)
    name = image_name(store, name)
    item = store.read_state().items[name]
    if item.active is None:
        raise NotFound(f"no version of {name} is active")
    active = store.read_manifest(item.active).version
    earlier = [(m.version, sha) for sha in item.installed if (m := store.read_manifest(sha)).version < active]
    if not earlier:
        raise NotFound(f"no version of {name} below v{active} is still in the store")
    return _switch(vault, store, name, max(earlier)[1])


def after_import(vault: Vault, name: str, manifest_sha256: str, version: int) -> Switch:
    """Load a version the import just installed (and made active) into container storage."""
    store = Store.unlocked(vault)
    layout = layout_dir(store, manifest_sha256)
    return Switch(name, 0, version, layout, storage.load(layout, name, version))
