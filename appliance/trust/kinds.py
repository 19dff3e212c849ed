"""The kinds of bundle, in one table: every layer that treats kinds differently asks `KINDS`.

A kind says, for its bundles:
1. which artifacts every manifest of it lists (`trust.manifest`, rule 7);
2. whether its artifacts are encrypted at rest, and under which data key ids (`store.at_rest`);
   an encrypted kind is crypto-erased by name and by the kill's wipe (`appliance.erase`), and the
   kill's journal record lists its erased keys under its own field;
3. how it is admitted after the signature and hash checks, on import and on every load:
   bound to one base and loaded from its two files for the active base (an overlay, a control
   vector), its layout checked (an image), or its GGUF probed in a child at import (a base model,
   `store.bases`);
4. whether the store selects one item of it for the runtime, and in which field of its state
   (`store.layout.StoreState.selecting`).

It lives beside the manifest format, the lowest layer that asks (rule 7); the store, the eraser,
the kill and the CLI dispatch through it. Adding a kind: an entry here, its name in the schema's
enum (`manifests/appliance-manifest.schema.json`, held equal by tests/store/test_kinds.py), and
its own admission rule with its tests.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Union

from ..overlay import control, files
from .image_rules import check_image

if TYPE_CHECKING:  # manifest.py asks this table for rule 7; the rules here only read what it admitted
    from .manifest import Manifest


class BaseShape(Protocol):
    """What a bound kind is admitted against: the active base (`store.active.ActiveBase`)."""

    @property
    def sha256(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def n_layer(self) -> int: ...


Loaded = Union[files.Overlay, control.ControlVector]
Loader = Callable[[bytes, bytes, BaseShape], Loaded]  # (its json, its tensors, the base) -> the item admitted


def _load_overlay(meta: bytes, tensors: bytes, base: BaseShape) -> files.Overlay:
    return files.load_overlay(meta, tensors, base_sha256=base.sha256, hidden_size=base.hidden_size)


def _load_control(meta: bytes, tensors: bytes, base: BaseShape) -> control.ControlVector:
    return control.load_control(meta, tensors, base_sha256=base.sha256, hidden_size=base.hidden_size, n_layer=base.n_layer)


def _check_image(manifest: "Manifest", artifacts: Path) -> None:
    check_image(manifest, artifacts)


@dataclass(frozen=True)
class Kind:
    name: str  # as the manifest's "kind" says it
    label: str  # in messages
    files: tuple[str, ...] = ()  # listed by every manifest of it; a bound kind's are (json, tensors), as `load` takes them
    key_prefix: Optional[str] = None  # its data key ids begin so; None: kept in the clear (and nothing to crypto-erase)
    load: Optional[Loader] = None  # bound to one base: admitted from `files` for the active base
    check_layout: Optional[Callable[["Manifest", Path], None]] = None  # its artifacts' layout (a directory of them)
    probed: bool = False  # a model: one GGUF (`store.bases` rule 1), probed in a child before it is installed
    kill_field: str = ""  # an encrypted kind's: the kill record's field listing its erased data key ids
    selected_as: Optional[str] = None  # the store state's field naming the one item of it the runtime loads

    @property
    def binds_base(self) -> bool:
        return self.load is not None

    @property
    def encrypted(self) -> bool:
        return self.key_prefix is not None

    @property
    def keys(self) -> str:
        """The prefix of its data key ids; asked only of an encrypted kind."""
        if self.key_prefix is None:
            raise ValueError(f"a {self.label} is kept in the clear: it has no data keys")
        return self.key_prefix


OVERLAY = Kind(
    "overlay", "overlay", (files.JSON_NAME, files.TENSORS_NAME), "overlay/", _load_overlay,
    kill_field="overlays_erased", selected_as="overlay",
)  # fmt: skip
CONTROL_VECTOR = Kind(
    "control-vector", "control vector", (control.JSON_NAME, control.TENSORS_NAME), "control/", _load_control,
    kill_field="controls_erased", selected_as="control",
)  # fmt: skip
BASE_MODEL = Kind("base-model", "base model", key_prefix="base/", probed=True, kill_field="bases_erased")
IMAGE = Kind("image", "image", check_layout=_check_image)

KINDS = {kind.name: kind for kind in (OVERLAY, CONTROL_VECTOR, BASE_MODEL, IMAGE)}
ENCRYPTED = tuple(kind for kind in KINDS.values() if kind.encrypted)
