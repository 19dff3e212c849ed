"""The control vector (format `control-vector/1`): one direction per steered layer, and the rules that admit it.

A control vector adds `strength * direction.L` to the output of transformer block L (0-based, L >= 1)
at every position: llama.cpp's `llama_set_adapter_cvec` convention, where block 0 is never steered.
Its two files are `control.json` + `control.safetensors`. A control vector is admitted only if every
rule holds; each rule is one small function that raises `ControlVectorRejected` naming the fault
(rule 5: `BindingMismatch`); rules 1-2, and what rule 3 shares with an overlay's, are `item_files.ItemFiles`':

1. each file is under its size cap;
2. `control.json` is UTF-8 JSON (`untrusted_json`: nesting capped), an object with exactly the known keys;
3. `format` is `control-vector/1`; hidden size, layers, strength and `base_model_sha256` are
   well-formed and within bounds;
4. `control.safetensors` parses, holds exactly one float32 tensor `direction.L` of length hidden size
   per listed layer L, and every value is finite and within bounds;
5. it is bound to the active base: same `base_model_sha256`, same hidden size, and every layer is a
   block the base has (L <= block count - 1).

Loading works on bytes, so a decrypted control vector never needs to touch the disk.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ApplianceError, BindingMismatch, NoControlVector, Refused
from .item_files import ItemFiles, is_finite_number, is_int, save_files

FORMAT = "control-vector/1"
JSON_NAME, TENSORS_NAME = "control.json", "control.safetensors"
MAX_LAYER = 1024
MAX_STRENGTH = 1000.0  # |strength|
MAX_COMPONENT = 1.0e4  # |strength * direction| per component: far past word soup, short of float16 overflow


class ControlVectorRejected(Refused):
    """Control-vector files (ours or a llama.cpp control-vector GGUF) that are malformed or out of bounds."""


FILES = ItemFiles(
    FORMAT,
    JSON_NAME,
    TENSORS_NAME,
    max_json_bytes=64 * 1024,
    max_tensors_bytes=64 * 1024 * 1024,
    required_keys=frozenset({"format", "hidden_size", "layers", "strength", "base_model_sha256"}),
    object_key="provenance",
    rejected=ControlVectorRejected,
)


@dataclass(frozen=True)
class ControlVector:
    KIND: ClassVar[str] = "control-vector"
    NOUN: ClassVar[str] = "control vector"
    RECORD: ClassVar[str] = "control"
    NOT_INSTALLED: ClassVar[type[ApplianceError]] = NoControlVector

    directions: dict[int, np.ndarray]  # layer L (block index, >= 1) -> (d,) float32
    strength: float
    base_model_sha256: str
    provenance: dict = field(default_factory=dict)  # how it was made: method, prompt-set hashes, layers, calibration

    @property
    def hidden_size(self) -> int:
        return len(next(iter(self.directions.values())))

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def with_strength(self, strength: float, **provenance) -> "ControlVector":
        return ControlVector(self.directions, float(strength), self.base_model_sha256, {**self.provenance, **provenance})

    def applied(self, n_layer: int) -> np.ndarray:
        """(n_layer - 1, d) float32: row L - 1 is what block L adds, zero where it is not steered.

        The layout `llama_set_adapter_cvec` reads: it starts at block 1 and holds every block, so
        switching from another vector leaves nothing of it behind.
        """
        out = np.zeros((n_layer - 1, self.hidden_size), dtype=np.float32)
        for layer, direction in self.directions.items():
            out[layer - 1] = np.float32(self.strength) * direction
        return out

    def record_fields(self) -> dict:
        return {"strength": self.strength}

    def zeroize(self) -> None:
        for direction in self.directions.values():
            direction.fill(0)


def _check_header(meta: dict) -> None:
    bad = FILES.bad_header
    layers = meta["layers"]
    if not (
        isinstance(layers, list)
        and layers
        and all(is_int(n) for n in layers)
        and all(a < b for a, b in zip(layers, layers[1:]))
        and 1 <= layers[0]
        and layers[-1] <= MAX_LAYER
    ):
        bad(f"layers must be a non-empty, strictly increasing list of block indices in 1..{MAX_LAYER}")
    strength = meta["strength"]
    if not (is_finite_number(strength) and abs(strength) <= MAX_STRENGTH):
        bad(f"strength must be a finite number in -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}")


def check_directions(where: str, directions: dict[int, np.ndarray], hidden_size: int, strength: float) -> None:
    """Every direction float32, (hidden_size,), finite, and within bounds at this strength."""
    for layer, t in sorted(directions.items()):
        name = f"direction.{layer}"
        FILES.check_tensor(where, name, t, (hidden_size,))
        if float(np.abs(t).max(initial=0.0)) * abs(strength) > MAX_COMPONENT:
            raise ControlVectorRejected(f"{where}: {name} times strength {strength:g} exceeds {MAX_COMPONENT:g} in a component")


def _parse_tensors(data: bytes, meta: dict) -> dict[int, np.ndarray]:
    tensors = FILES.tensors(data)
    expected = {f"direction.{n}" for n in meta["layers"]}
    if set(tensors) != expected:
        raise ControlVectorRejected(
            f"{TENSORS_NAME}: must hold exactly {sorted(expected)} (the layers control.json lists), found {sorted(tensors)}"
        )
    directions = {n: tensors[f"direction.{n}"] for n in meta["layers"]}
    check_directions(TENSORS_NAME, directions, meta["hidden_size"], meta["strength"])
    return directions


def check_binding(vector: ControlVector, base_sha256: str, hidden_size: int, n_layer: int) -> None:
    if vector.base_model_sha256 != base_sha256:
        raise BindingMismatch(f"control vector is bound to base {vector.base_model_sha256}, the active base is {base_sha256}")
    if vector.hidden_size != hidden_size:
        raise BindingMismatch(f"control vector hidden_size {vector.hidden_size} != base hidden size {hidden_size}")
    if vector.layers[-1] > n_layer - 1:
        raise BindingMismatch(f"control vector steers block {vector.layers[-1]}; the base has blocks 1..{n_layer - 1} to steer")


def load_control(json_bytes: bytes, tensor_bytes: bytes, *, base_sha256: str, hidden_size: int, n_layer: int) -> ControlVector:
    """Admit a control vector for the active base, or raise `ControlVectorRejected` / `BindingMismatch`."""
    meta = FILES.header(json_bytes, tensor_bytes)
    _check_header(meta)
    directions = _parse_tensors(tensor_bytes, meta)
    vector = ControlVector(directions, float(meta["strength"]), meta["base_model_sha256"], meta.get("provenance", {}))
    check_binding(vector, base_sha256, hidden_size, n_layer)
    return vector


def load_control_dir(directory: Path, *, base_sha256: str, hidden_size: int, n_layer: int) -> ControlVector:
    return load_control(*FILES.read_dir(directory), base_sha256=base_sha256, hidden_size=hidden_size, n_layer=n_layer)


def control_files(vector: ControlVector) -> dict[str, bytes]:
    """The two files' bytes, as another tool could write them from the format description."""
    meta = {
        "hidden_size": vector.hidden_size,
        "layers": vector.layers,
        "strength": vector.strength,
        "base_model_sha256": vector.base_model_sha256,
        "provenance": vector.provenance,
    }
    tensors = {f"direction.{n}": np.ascontiguousarray(vector.directions[n], dtype=np.float32) for n in vector.layers}
    return FILES.files(meta, tensors)


def save_control(vector: ControlVector, directory: Path) -> None:
    save_files(control_files(vector), directory)
