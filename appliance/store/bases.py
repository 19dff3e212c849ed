"""Base models: the embedded default and imported ones, which one is active, and opening it for llama.cpp.

Rules:
1. A base-model bundle holds exactly one `.gguf` artifact, plus optional text files (a licence, a
   model card: `.txt`, `.md`, or no suffix); it may not be named `embedded`.
2. At import, the GGUF is copied into a sealed memfd as it is hashed and encrypted into staging, and
   probed in a limited child process (`runtime.probe`): nothing is installed unless it would run.
3. The active base is the store's `base` (None: the embedded default, pinned in the software). Every
   start opens it the same way: the GGUF decrypted into a sealed memfd (`at_rest.decrypt_to_memfd`)
   that llama.cpp opens as /proc/self/fd/N, so no plaintext copy lies on disk, every byte authenticated
   by its AEAD tag (the SHA-256 was checked once, at import: docs/design.md, "Keys, encryption at
   rest"). A failure is `BaseRejected` (exit 3) naming the base, and nothing is loaded; a
   crypto-erased base is `Erased` (exit 6). Under a memory cap too small for the GGUF (at import, or at
   a start) it is `NotEnoughMemory` (exit 3) before a byte is decrypted (`runtime.memory`).
4. `use_base` verifies the whole base first (every artifact re-hashed against the accepted manifest), remembers the active overlay of the base it leaves and
   brings back the one remembered for the base it enters (else the selection stays, shown as bound to
   another base), journals a `base-switch` record, then commits state.json.
"""

import os
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Optional

from ..errors import Erased, NotFound, Refused
from ..journal import Journal, provenance
from ..progress import SILENT, Steps
from ..runtime.memory import Need, gguf_shape, require_room
from ..runtime.probe import PendingProbe
from ..trust.builtin import GgufShape, VerifiedModel, embedded_pin, verify_pinned
from ..trust.manifest import Artifact, Manifest
from ..vault import Vault
from .active import ActiveBase, base_shape, versions_text
from .at_rest import Check, PlainMemfd, Sealing, decrypt_to_memfd, read_artifact
from .layout import Store

EMBEDDED = "embedded"  # what `base use` calls the built-in default
TEXT_FILE = re.compile(r"(?:.*/)?[^/.]+|.*\.(?:txt|md)")


class BaseBundleInvalid(Refused):
    """A base-model bundle that is not one `.gguf` plus text files, or that takes a reserved name."""


class BaseRejected(Refused):
    """An installed base failed verification when it was opened: nothing was loaded."""


def gguf_artifact(manifest: Manifest) -> Artifact:
    """Rule 1: the one GGUF of a base-model manifest."""
    ggufs = [a for a in manifest.artifacts if a.path.endswith(".gguf")]
    others = [a.path for a in manifest.artifacts if not a.path.endswith(".gguf")]
    if manifest.name == EMBEDDED:
        raise BaseBundleInvalid(f"a base model may not be named {EMBEDDED!r}: that name is the built-in default")
    if len(ggufs) != 1:
        raise BaseBundleInvalid(
            f"{manifest.name} v{manifest.version}: a base-model bundle holds exactly one .gguf, not {len(ggufs)}"
        )
    bad = [p for p in others if not TEXT_FILE.fullmatch(p)]
    if bad:
        raise BaseBundleInvalid(f"{manifest.name} v{manifest.version}: {bad[0]} is neither the .gguf nor a text file (.txt, .md)")
    return ggufs[0]


class StagedProbe:
    """Rule 2 for an import: the probe child started before the GGUF is copied, so it loads its libraries
    while its memfd fills with the very bytes hashed and encrypted into staging (`importer`): a stage of
    the copy (`at_rest.write_artifact`), on a thread beside the hash's. Once the memfd is whole and the
    hash is checked (whichever comes last), the memfd is sealed and the child told to load it, while the
    ciphertext may still be being written."""

    def __init__(self, manifest: Manifest, key_id: str):
        self.artifact = gguf_artifact(manifest)
        require_room(f"base {manifest.name} v{manifest.version}", Need(self.artifact.size, 0, 0))
        self.plain = PlainMemfd(key_id)
        self._waiting, self._lock = 2, threading.Lock()  # for the memfd's last write and the hash's check
        try:
            self._child = PendingProbe(
                self.plain.fd, self.artifact.size, f"{manifest.name} v{manifest.version}: {self.artifact.path}"
            )
        except BaseException:
            self.plain.close()
            raise

    def write(self, data: memoryview) -> None:
        self.plain.write(data)

    def close(self) -> None:
        """The memfd holds the whole GGUF."""
        self._one_done()

    def hash_checked(self) -> None:
        """The GGUF's size and SHA-256 are the manifest's."""
        self._one_done()

    def _one_done(self) -> None:
        with self._lock:
            self._waiting -= 1
            if self._waiting == 0:  # the last of the two, on its own thread: seal, and let the child probe it
                self.plain.sealed()
                self._child.go()

    def verdict(self) -> GgufShape:
        """The child's verdict on the GGUF (once the copy is done), then the shape of the GGUF it passed, for the
        accepted record (a start's memory check reads it there); the memfd is closed either way."""
        try:
            self._child.result()
            return gguf_shape(Path(f"/proc/self/fd/{self.plain.fd}"))
        except BaseException:
            self._child.cancel()
            raise
        finally:
            self.plain.close()

    def cancel(self) -> None:
        """The copy failed: the child reads nothing and goes, the memfd with it."""
        try:
            self._child.cancel()
        finally:
            self.plain.close()


def open_model(vault: Vault, name: str, check: Check = Check.TAGS, steps: Steps = SILENT) -> VerifiedModel:
    """Rule 3 for installed base NAME (its active version): a VerifiedModel whose path is its memfd.

    `Check.SHA256` (`verify`, `base use`): every artifact re-hashed against the accepted manifest too.
    """
    store = Store.unlocked(vault)
    item = store.read_state().items.get(name)
    if item is None or item.kind != "base-model":
        raise NotFound(f"no base model named {name} is installed (appliance base list)")
    if item.active is None:
        raise Erased(f"base {name} was crypto-erased ({versions_text(item.erased)}): import a new signed bundle")
    manifest = store.read_manifest(item.active)
    directory = store.object_dir(manifest.sha256)
    gguf = gguf_artifact(manifest)
    record = store.read_accepted(manifest.sha256)
    require_room(f"base {name} v{manifest.version}", Need(gguf.size, 0, 0))  # the memfd; all of it before llama.cpp loads
    sealing = Sealing.installed(vault, manifest)
    try:
        if check is Check.SHA256:
            for artifact in manifest.artifacts:
                if artifact is not gguf:
                    read_artifact(directory, artifact, sealing, keep=False)
        with steps.step(f"verify base {name} v{manifest.version}", gguf.size) as advance:
            fd = decrypt_to_memfd(directory, gguf, sealing, check, advance)
    except Refused as e:
        raise BaseRejected(f"base {name} v{manifest.version} failed verification, nothing was loaded: {e}") from None
    finally:
        sealing.zeroize()
    path = Path(f"/proc/self/fd/{fd}")
    return VerifiedModel(manifest.name, manifest.version, path, gguf.sha256, record.signers, fd, record.shape)


def close_model(model: VerifiedModel) -> None:
    """Free an imported base's memfd (the embedded default has none)."""
    if model.fd is not None:
        os.close(model.fd)


def verify_embedded(steps: Steps = SILENT) -> VerifiedModel:
    """The embedded default, hashed against its pin in the software."""
    pin = embedded_pin()
    with steps.step(f"verify base {EMBEDDED} ({pin.name})", pin.size) as advance:
        return verify_pinned(pin, advance)


def active_model(vault: Vault, check: Check = Check.TAGS, steps: Steps = SILENT) -> VerifiedModel:
    """The active base, verified (rule 3): the embedded default against its pin, an imported one decrypted."""
    name = Store.unlocked(vault).read_state().base
    return verify_embedded(steps) if name is None else open_model(vault, name, check, steps)


class InstalledBase(ActiveBase):
    """The active base for binding checks: its SHA-256 from the accepted manifest, its hidden size and
    block count from its accepted record (`shape`), or, for a base imported before the record kept them,
    read from the GGUF (decrypted once) only when an overlay or control vector needs them."""

    def __init__(self, vault: Vault, name: str, sha256: str, shape: Optional[GgufShape] = None):
        self.sha256, self._vault, self._name = sha256, vault, name
        if shape is not None and shape.n_layer:
            self.hidden_size, self.n_layer = shape.n_embd, shape.n_layer

    @cached_property
    def _shape(self) -> tuple[int, int]:
        model = open_model(self._vault, self._name)
        try:
            return base_shape(model.path)
        finally:
            close_model(model)


def active_base(vault: Vault) -> ActiveBase:
    """The base overlays are bound to now, without decrypting it unless a hidden size is asked for."""
    store = Store.unlocked(vault)
    state = store.read_state()
    if state.base is None:
        return ActiveBase(verify_pinned(embedded_pin()))
    item = state.items[state.base]
    if item.active is None:
        raise Erased(f"the active base {state.base} was crypto-erased: appliance base use embedded")
    gguf = gguf_artifact(store.read_manifest(item.active))
    return InstalledBase(vault, state.base, gguf.sha256, store.read_accepted(item.active).shape)


def active_sha256(vault: Vault) -> str:
    """The active base's SHA-256 as pinned or accepted, without hashing it: for listings (never for loading)."""
    store = Store.unlocked(vault)
    state = store.read_state()
    active = state.items[state.base].active if state.base is not None else None
    return embedded_pin().sha256 if active is None else gguf_artifact(store.read_manifest(active)).sha256


@dataclass(frozen=True)
class BaseRow:
    name: str
    version: Optional[int]  # None once crypto-erased
    size: int
    sha256: str
    origin: str  # signers, or "embedded, built-in pin"
    expires: Optional[datetime]
    active: bool
    erased: tuple[int, ...] = ()


def list_bases(vault: Vault) -> list[BaseRow]:
    """The embedded default and every installed base (no decryption: what the accepted manifests say)."""
    store = Store.unlocked(vault)
    state = store.read_state()
    pin = embedded_pin()
    rows = [
        BaseRow(f"{EMBEDDED} ({pin.name})", pin.version, pin.size, pin.sha256, "embedded, built-in pin", None, state.base is None)
    ]
    for name, item in sorted(state.items.items()):
        if item.kind != "base-model":
            continue
        if item.active is None:
            rows.append(BaseRow(name, None, 0, "", "crypto-erased", None, state.base == name, item.erased))
            continue
        manifest = store.read_manifest(item.active)
        gguf = gguf_artifact(manifest)
        signers = f"signed by {', '.join(store.read_signers(manifest.sha256))}"
        rows.append(
            BaseRow(name, manifest.version, gguf.size, gguf.sha256, signers, manifest.expires, state.base == name, item.erased)
        )
    return rows


def _key(base: Optional[str]) -> str:
    return EMBEDDED if base is None else base


def use_base(vault: Vault, name: str, steps: Steps = SILENT) -> tuple[VerifiedModel, float]:
    """Rule 4: make NAME (or `embedded`) the active base; returns it (its memfd closed) and the seconds it took."""
    t0 = time.perf_counter()
    store = Store.unlocked(vault)
    state = store.read_state()
    target = None if name == EMBEDDED else name
    model = verify_embedded(steps) if target is None else open_model(vault, name, Check.SHA256, steps)
    close_model(model)
    remembered = dict(state.overlay_of_base)
    if state.overlay is not None:
        remembered[_key(state.base)] = state.overlay
    back = remembered.get(_key(target))
    overlay = back if back is not None and back in state.items else state.overlay
    # Journalled before the commit: a crash between leaves a journalled switch that did not happen
    # (`status` shows the base still active), never a switch that no journal records.
    journal = Journal.create(vault)
    try:
        journal.append(
            "base-switch", **{"from": _key(state.base), "to": _key(target), "base": base_record(model), "overlay": overlay}
        )
    finally:
        journal.close()
    store.write_state(replace(state, base=target, overlay=overlay, overlay_of_base=remembered))
    return replace(model, fd=None), time.perf_counter() - t0


def base_record(model: VerifiedModel) -> dict:
    """The base part of a journal message's provenance (and of a `base-switch` record)."""
    return provenance.base(model.name, model.sha256, model.version, model.signers)
