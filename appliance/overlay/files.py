"""The overlay's two files, `overlay.json` + `overlay.safetensors`, and the rules that admit them.

An overlay is admitted only if every rule holds; each rule is one small
function that raises `OverlayRejected` naming the fault (rule 5: `BindingMismatch`);
rules 1-2, and what rule 3 shares with a control vector's, are `item_files.ItemFiles`':

1. each file is under its size cap;
2. `overlay.json` is UTF-8 JSON (`untrusted_json`: nesting capped), an object with exactly the known keys;
3. `format` is `takens-lora/1`; hidden size, rank, delays, alpha, activation
   and `base_model_sha256` are well-formed and within bounds;
4. `overlay.safetensors` parses, holds exactly A, W, B, all float32, with the
   shapes the JSON declares, and every value is finite;
5. it is bound to the active base: same `base_model_sha256`, same hidden size.

Loading works on bytes, so a decrypted overlay never needs to touch the disk.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ApplianceError, BindingMismatch, NoOverlay, OverlayRejected
from .item_files import ItemFiles, is_finite_number, is_int, save_files
from .params import ACTIVATIONS, OverlayParams

FORMAT = "takens-lora/1"
JSON_NAME, TENSORS_NAME = "overlay.json", "overlay.safetensors"
MAX_RANK, MAX_DELAYS, MAX_DELAY = 1024, 64, 4096
FILES = ItemFiles(
    FORMAT,
    JSON_NAME,
    TENSORS_NAME,
    max_json_bytes=64 * 1024,
    max_tensors_bytes=256 * 1024 * 1024,
    required_keys=frozenset({"format", "hidden_size", "rank", "delays", "alpha", "activation", "base_model_sha256"}),
    object_key="training",
    rejected=OverlayRejected,
)


@dataclass(frozen=True)
class Overlay:
    KIND: ClassVar[str] = "overlay"
    NOUN: ClassVar[str] = "overlay"
    RECORD: ClassVar[str] = "overlay"
    NOT_INSTALLED: ClassVar[type[ApplianceError]] = NoOverlay

    params: OverlayParams
    base_model_sha256: str
    training: dict = field(default_factory=dict)

    def record_fields(self) -> dict:
        return {}

    def zeroize(self) -> None:
        for array in (self.params.A, self.params.W, self.params.B):
            array.fill(0)


def _check_header(meta: dict) -> None:
    bad = FILES.bad_header
    if not (is_int(meta["rank"]) and 0 < meta["rank"] <= MAX_RANK):
        bad(f"rank must be an integer in 1..{MAX_RANK}")
    delays = meta["delays"]
    if not (
        isinstance(delays, list)
        and 0 < len(delays) <= MAX_DELAYS
        and all(is_int(t) for t in delays)
        and delays[0] == 0
        and all(a < b for a, b in zip(delays, delays[1:]))
        and delays[-1] <= MAX_DELAY
    ):
        bad(f"delays must be strictly increasing integers starting at 0, at most {MAX_DELAYS} of them, each <= {MAX_DELAY}")
    if not is_finite_number(meta["alpha"]):
        bad("alpha must be a finite number")
    if meta["activation"] not in ACTIVATIONS:
        bad(f"activation must be one of {list(ACTIVATIONS)}")


def _parse_tensors(data: bytes, meta: dict) -> dict[str, np.ndarray]:
    tensors = FILES.tensors(data)
    if set(tensors) != {"A", "W", "B"}:
        raise OverlayRejected(f"{TENSORS_NAME}: must hold exactly tensors A, W, B, found {sorted(tensors)}")
    d, r, k = meta["hidden_size"], meta["rank"], len(meta["delays"])
    for name, shape in (("A", (r, d)), ("W", (k, r)), ("B", (d, r))):
        FILES.check_tensor(TENSORS_NAME, name, tensors[name], shape)
    return tensors


def _check_binding(meta: dict, base_sha256: str, hidden_size: int) -> None:
    if meta["base_model_sha256"] != base_sha256:
        raise BindingMismatch(f"overlay is bound to base {meta['base_model_sha256']}, the active base is {base_sha256}")
    if meta["hidden_size"] != hidden_size:
        raise BindingMismatch(f"overlay hidden_size {meta['hidden_size']} != base hidden size {hidden_size}")


def load_overlay(json_bytes: bytes, tensor_bytes: bytes, *, base_sha256: str, hidden_size: int) -> Overlay:
    """Admit an overlay for the active base, or raise `OverlayRejected` / `BindingMismatch`."""
    meta = FILES.header(json_bytes, tensor_bytes)
    _check_header(meta)
    tensors = _parse_tensors(tensor_bytes, meta)
    _check_binding(meta, base_sha256, hidden_size)
    params = OverlayParams(**tensors, delays=tuple(meta["delays"]), alpha=float(meta["alpha"]), activation=meta["activation"])
    return Overlay(params, meta["base_model_sha256"], meta.get("training", {}))


def load_overlay_dir(directory: Path, *, base_sha256: str, hidden_size: int) -> Overlay:
    return load_overlay(*FILES.read_dir(directory), base_sha256=base_sha256, hidden_size=hidden_size)


def overlay_files(overlay: Overlay) -> dict[str, bytes]:
    """The two files' bytes, as another tool could write them from the format description."""
    p = overlay.params
    meta = {
        "hidden_size": p.hidden_size,
        "rank": p.rank,
        "delays": list(p.delays),
        "alpha": p.alpha,
        "activation": p.activation,
        "base_model_sha256": overlay.base_model_sha256,
        "training": overlay.training,
    }
    return FILES.files(meta, {"A": p.A, "W": p.W, "B": p.B})


def save_overlay(overlay: Overlay, directory: Path) -> None:
    save_files(overlay_files(overlay), directory)
