"""What is installed, re-verified: the runtime's only way to load an overlay or a control vector.

Rules applied to an installed version before it is used, each raising `Refused`:

1. its manifest's bytes still hash to the address it is stored under;
2. each artifact's size and SHA-256 match that manifest (the bytes hashed are
   the bytes handed to the loader, never re-read after the check); an overlay's
   are decrypted into memory first (`at_rest`), so the check is on the plaintext;
3. an overlay is admitted by `overlay.files.load_overlay` for the active base
   (same base SHA-256 as its manifest binds, same hidden size); a control vector by
   `overlay.control.load_control` (the same, and every steered block one the base has);
   an image's artifacts are the `dir:` layout its signed record describes (`trust.image_rules`).
"""

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Optional

from ..errors import ApplianceError, BindingMismatch, Erased, NotFound, Refused
from ..journal import provenance
from ..overlay.loadable import BY_KIND, Loadable
from ..progress import SILENT, Steps
from ..runtime.embeddings import EmbeddingTable
from ..trust.builtin import VerifiedModel, embedded_pin, verify_pinned
from ..trust.kinds import KINDS, Loaded
from ..trust.manifest import Manifest
from ..utc import format_time
from ..vault import Vault, zeroize
from .at_rest import Sealing, read_artifact
from .layout import Store, StoreDamaged, StoreState


class VerificationFailed(Refused):
    """`verify`: an installed version no longer passes the rules above (the first failure is named)."""


def base_shape(gguf_path: Path) -> tuple[int, int]:
    """(hidden size, block count) a GGUF declares, from its header alone (`runtime.embeddings`)."""
    table = EmbeddingTable(gguf_path)
    try:
        shape = table.n_embd, table.n_layer
    finally:
        table.close()
    if shape[1] is None:
        raise BindingMismatch("the active base declares no block count: no control vector can be bound to it")
    return shape[0], shape[1]


class ActiveBase:
    """The active base that overlays are bound to; its hidden size and block count are read from the GGUF only when needed."""

    def __init__(self, model: VerifiedModel, hidden_size: Optional[int] = None, n_layer: Optional[int] = None):
        self.sha256, self._path = model.sha256, model.path
        if model.shape is not None and model.shape.n_layer:  # an imported base's, kept at import (none: `base_shape` says why)
            hidden_size, n_layer = hidden_size or model.shape.n_embd, n_layer or model.shape.n_layer
        if hidden_size is not None:
            self.hidden_size = hidden_size
        if n_layer is not None:
            self.n_layer = n_layer

    @cached_property
    def _shape(self) -> tuple[int, int]:
        return base_shape(self._path)

    @cached_property
    def hidden_size(self) -> int:
        return self._shape[0]

    @cached_property
    def n_layer(self) -> int:
        return self._shape[1]


def embedded_base() -> ActiveBase:
    """The embedded default base, verified against its built-in pin (`bases.active_base` gives the active one)."""
    return ActiveBase(verify_pinned(embedded_pin()))


@dataclass(frozen=True)
class InstallRecord:
    """Where an installed item came from: what the journal records with every reply."""

    name: str
    kind: str
    version: int
    manifest_sha256: str
    signers: tuple[str, ...]
    created: datetime
    expires: datetime
    demo_signers: tuple[str, ...] = ()  # signers pinned by `init --demo`: never production trust
    binds_base: Optional[str] = None  # an overlay's base SHA-256

    def journal_record(self, on: bool, extra: dict) -> dict:
        """An overlay's or a control vector's part of a journal message's provenance; `extra`: what its kind adds."""
        return {
            **provenance.item(self.name, self.version, self.manifest_sha256, list(self.signers), on, list(self.demo_signers)),
            **extra,
        }


@dataclass(frozen=True)
class ActiveItem:
    """An overlay or a control vector, decrypted into memory and admitted for the active base, with where it came from."""

    weights: Loadable
    provenance: InstallRecord

    def journal_record(self, on: bool) -> dict:
        return self.provenance.journal_record(on, self.weights.record_fields())

    def zeroize(self) -> None:
        """Zero the decrypted numbers in place, for the kill-switch (other copies: docs/procedures.md)."""
        self.weights.zeroize()


@dataclass(frozen=True)
class InstalledItem:
    name: str
    kind: str
    provenance: Optional[InstallRecord]  # of the active version; None once every version was crypto-erased
    installed_versions: tuple[int, ...]
    erased_versions: tuple[int, ...]
    is_active_overlay: bool
    is_active_control: bool = False


Admitted = Optional[Loaded]


def check_binding(manifest: Manifest, directory: Path, sealing: Sealing, base: Optional[ActiveBase]) -> Admitted:
    """Rule 3, as its kind says (`trust.kinds`): a bound kind must be bound to the active base; returns it admitted
    (None for other kinds).

    The base's hidden size (and block count) is read only for an item whose SHA-256 binding already matched.
    Kinds that bind to no base (an image) are checked with `base=None`; an overlay or control vector never is.
    """
    kind = KINDS[manifest.kind]
    if kind.check_layout is not None:
        kind.check_layout(manifest, directory / "artifacts")
    if kind.load is None:
        return None
    if base is None:
        raise BindingMismatch(f"{manifest.name} v{manifest.version} is a {manifest.kind}: it is checked against the active base")
    base_sha256 = base.sha256
    if manifest.binds_base_sha256 != base_sha256:
        bound = manifest.binds_base_sha256 or "none"
        raise BindingMismatch(
            f"{manifest.name} v{manifest.version} is bound to base {bound[:16]}, active base is {base_sha256[:16]}"
            f" (full: {bound}, {base_sha256}; appliance base list)"
        )
    json_name, tensors_name = kind.files
    files: dict[str, bytearray] = {}
    try:
        for path in (json_name, tensors_name):
            files[path] = read_artifact(directory, manifest.artifact(path), sealing, keep=True)
        # The safetensors parser takes only immutable bytes: that copy cannot be zeroed and lives
        # until the loader is done with it (a Python limit docs/procedures.md states); ours are zeroed.
        meta, tensors = bytes(files[json_name]), bytes(files[tensors_name])
        return kind.load(meta, tensors, base)
    finally:
        for data in files.values():
            zeroize(data)


def verify_version(
    store: Store, manifest_sha256: str, vault: Vault, base: Optional[ActiveBase], bind: bool = True, steps: Steps = SILENT
) -> tuple[Manifest, Admitted]:
    """Rules 1-3 for one installed version; an overlay's (or control vector's) own two files are decrypted and
    hashed once, as they are loaded.

    `bind=False`: rules 1-2 only (an overlay made for another installed base is intact, only inactive).
    """
    manifest = store.read_manifest(manifest_sha256)
    directory = store.object_dir(manifest_sha256)
    loaded_by_binding = KINDS[manifest.kind].files if bind and KINDS[manifest.kind].binds_base else ()
    sealing = Sealing.installed(vault, manifest)
    try:
        for artifact in manifest.artifacts:
            if artifact.path not in loaded_by_binding:
                with steps.step(f"verify {manifest.name} v{manifest.version} {artifact.path}", artifact.size) as advance:
                    read_artifact(directory, artifact, sealing, keep=False, progress=advance)
        return manifest, check_binding(manifest, directory, sealing, base) if bind else None
    finally:
        sealing.zeroize()


def _provenance(store: Store, manifest: Manifest) -> InstallRecord:
    signers = store.read_signers(manifest.sha256)
    demo = tuple(f for f in signers if f in store.trust().policy().demo)
    return InstallRecord(
        manifest.name,
        manifest.kind,
        manifest.version,
        manifest.sha256,
        signers,
        manifest.created,
        manifest.expires,
        demo,
        manifest.binds_base_sha256,
    )


def load_active(kind: str, base: ActiveBase, vault: Vault) -> ActiveItem:
    """The active item of `kind` (an overlay or a control vector), decrypted into memory, re-hashed against its
    accepted manifest and admitted for this base (hidden size; a control vector's block count too), with its provenance.

    Raises its kind's `NOT_INSTALLED` (`NoOverlay`, `NoControlVector`: exit 5) when none is installed, `Erased`
    (exit 6) when it was crypto-erased, `Refused` (exit 3) when it fails a check.
    """
    loadable = BY_KIND[kind]
    store = Store.unlocked(vault)
    state = store.read_state()
    name = getattr(state, str(KINDS[kind].selected_as))  # state.json names the selected one of each bound kind
    manifest, weights = _load_active(store, state, name, loadable.NOUN, loadable.NOT_INSTALLED, base, vault)
    if not isinstance(weights, loadable):  # state.json names, as the active one, a version of another kind
        raise StoreDamaged(f"{manifest.name} v{manifest.version} is a {manifest.kind}, not {_a(loadable.NOUN)}")
    return ActiveItem(weights, _provenance(store, manifest))


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _load_active(
    store: Store,
    state: StoreState,
    name: Optional[str],
    what: str,
    missing: type[ApplianceError],
    base: ActiveBase,
    vault: Vault,
) -> tuple[Manifest, Admitted]:
    """Rules 1-3 for the active version of item `name` (None: none is active, `missing` is raised)."""
    if name is None:
        raise missing(f"no {what} is installed: import a signed bundle first (appliance update import FILE)")
    item = state.items[name]
    if item.active is None:
        raise Erased(f"{what} {name} was crypto-erased ({versions_text(item.erased)}): import a new signed bundle")
    return verify_version(store, item.active, vault, base)


def versions_text(versions: tuple[int, ...]) -> str:
    return ", ".join(f"v{v}" for v in versions)


def verify_installed(base: ActiveBase, vault: Vault, steps: Steps = SILENT) -> list[tuple[str, str]]:
    """Every installed version of every item, re-verified: [(label, "" if ok else the fault)]."""
    store = Store.unlocked(vault)
    results = []
    for name, item in sorted(store.read_state().items.items()):
        for sha in item.installed:
            label = f"{name} {sha[:16]}{' (active)' if sha == item.active else ''}"
            try:
                binds = store.read_manifest(sha).binds_base_sha256
                other = KINDS[item.kind].binds_base and binds is not None and binds != base.sha256
                manifest, _ = verify_version(store, sha, vault, base, bind=not other, steps=steps)
                inactive = (
                    f" (inactive: bound to base {binds[:16]}, active base is {base.sha256[:16]})" if other and binds else ""
                )
                label = f"{name} v{manifest.version}{' (active)' if sha == item.active else ''}{inactive}"
                results.append((label, ""))
            except (Refused, NotFound, Erased) as e:
                results.append((label, str(e)))
    return results


def describe_installed(vault: Vault) -> tuple[StoreState, list[InstalledItem]]:
    """The store's state (time floor, active overlay and control vector) and each item's active version with its provenance."""
    store = Store.unlocked(vault)
    state = store.read_state()
    items = []
    for name, item in sorted(state.items.items()):
        versions = tuple(sorted(store.read_manifest(sha).version for sha in item.installed))
        provenance = _provenance(store, store.read_manifest(item.active)) if item.active else None
        items.append(
            InstalledItem(name, item.kind, provenance, versions, item.erased, name == state.overlay, name == state.control)
        )
    return state, items


def floor_text(state: StoreState) -> str:
    return format_time(state.floor) if state.floor else "none yet (no bundle accepted)"
