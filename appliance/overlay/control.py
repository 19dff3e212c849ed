"""The control vector (format `control-vector/1`): one direction per steered layer, and the rules that admit it.

A control vector adds `strength * direction.L` to the output of transformer block L (0-based, L >= 1)
at every position: llama.cpp's `llama_set_adapter_cvec` convention, where block 0 is never steered.
Its two files are `control.json` + `control.safetensors`. A control vector is admitted only if every
rule holds; each rule is one small function that raises `ControlVectorRejected` naming the fault
(rule 5: `BindingMismatch`):

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

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ..errors import BindingMismatch, Refused
from ..untrusted_json import JsonRejected, load_untrusted

FORMAT = "control-vector/1"
JSON_NAME, TENSORS_NAME = "control.json", "control.safetensors"
MAX_JSON_BYTES = 64 * 1024
MAX_TENSORS_BYTES = 64 * 1024 * 1024
MAX_HIDDEN, MAX_LAYER = 65536, 1024
MAX_STRENGTH = 1000.0  # |strength|
MAX_COMPONENT = 1.0e4  # |strength * direction| per component: far past word soup, short of float16 overflow
REQUIRED_KEYS = {"format", "hidden_size", "layers", "strength", "base_model_sha256"}
OPTIONAL_KEYS = {"provenance"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ControlVectorRejected(Refused):
    """Control-vector files (ours or a llama.cpp control-vector GGUF) that are malformed or out of bounds."""


@dataclass(frozen=True)
class ControlVector:
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


def _check_size(name: str, data: bytes, cap: int) -> None:
    if len(data) > cap:
        raise ControlVectorRejected(f"{name}: {len(data)} bytes exceeds the {cap}-byte cap")


def _parse_json(data: bytes) -> dict:
    try:
        meta = load_untrusted(data)
    except JsonRejected as e:
        raise ControlVectorRejected(f"{JSON_NAME}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ControlVectorRejected(f"{JSON_NAME}: must be a JSON object")
    missing, unknown = REQUIRED_KEYS - meta.keys(), meta.keys() - REQUIRED_KEYS - OPTIONAL_KEYS
    if missing:
        raise ControlVectorRejected(f"{JSON_NAME}: missing keys {sorted(missing)}")
    if unknown:
        raise ControlVectorRejected(f"{JSON_NAME}: unknown keys {sorted(unknown)}")
    return meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(meta: dict) -> None:
    def bad(what: str):
        raise ControlVectorRejected(f"{JSON_NAME}: {what}")

    if meta["format"] != FORMAT:
        bad(f"format {meta['format']!r} is not {FORMAT!r}")
    if not (_is_int(meta["hidden_size"]) and 0 < meta["hidden_size"] <= MAX_HIDDEN):
        bad(f"hidden_size must be an integer in 1..{MAX_HIDDEN}")
    layers = meta["layers"]
    if not (
        isinstance(layers, list)
        and layers
        and all(_is_int(n) for n in layers)
        and all(a < b for a, b in zip(layers, layers[1:]))
        and 1 <= layers[0]
        and layers[-1] <= MAX_LAYER
    ):
        bad(f"layers must be a non-empty, strictly increasing list of block indices in 1..{MAX_LAYER}")
    strength = meta["strength"]
    if not (
        isinstance(strength, (int, float))
        and not isinstance(strength, bool)
        and math.isfinite(strength)
        and abs(strength) <= MAX_STRENGTH
    ):
        bad(f"strength must be a finite number in -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}")
    if not (isinstance(meta["base_model_sha256"], str) and _SHA256.fullmatch(meta["base_model_sha256"])):
        bad("base_model_sha256 must be 64 lowercase hex digits")
    if not isinstance(meta.get("provenance", {}), dict):
        bad("provenance must be an object")


def check_directions(where: str, directions: dict[int, np.ndarray], hidden_size: int, strength: float) -> None:
    """Every direction float32, (hidden_size,), finite, and within bounds at this strength."""
    for layer, t in sorted(directions.items()):
        name = f"direction.{layer}"
        if t.dtype != np.float32:
            raise ControlVectorRejected(f"{where}: {name} is {t.dtype}, must be float32")
        if t.shape != (hidden_size,):
            raise ControlVectorRejected(f"{where}: {name} has shape {t.shape}, must be ({hidden_size},)")
        if not np.isfinite(t).all():
            raise ControlVectorRejected(f"{where}: {name} holds NaN or infinite values")
        if float(np.abs(t).max(initial=0.0)) * abs(strength) > MAX_COMPONENT:
            raise ControlVectorRejected(f"{where}: {name} times strength {strength:g} exceeds {MAX_COMPONENT:g} in a component")


def _parse_tensors(data: bytes, meta: dict) -> dict[int, np.ndarray]:
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for every malformed input
        raise ControlVectorRejected(f"{TENSORS_NAME}: not a valid safetensors file ({e})") from None
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
    _check_size(JSON_NAME, json_bytes, MAX_JSON_BYTES)
    _check_size(TENSORS_NAME, tensor_bytes, MAX_TENSORS_BYTES)
    meta = _parse_json(json_bytes)
    _check_header(meta)
    directions = _parse_tensors(tensor_bytes, meta)
    vector = ControlVector(directions, float(meta["strength"]), meta["base_model_sha256"], meta.get("provenance", {}))
    check_binding(vector, base_sha256, hidden_size, n_layer)
    return vector


def load_control_dir(directory: Path, *, base_sha256: str, hidden_size: int, n_layer: int) -> ControlVector:
    return load_control(
        (directory / JSON_NAME).read_bytes(),
        (directory / TENSORS_NAME).read_bytes(),
        base_sha256=base_sha256,
        hidden_size=hidden_size,
        n_layer=n_layer,
    )


def control_files(vector: ControlVector) -> dict[str, bytes]:
    """The two files' bytes, as another tool could write them from the format description."""
    meta = {
        "format": FORMAT,
        "hidden_size": vector.hidden_size,
        "layers": vector.layers,
        "strength": vector.strength,
        "base_model_sha256": vector.base_model_sha256,
        "provenance": vector.provenance,
    }
    tensors = {f"direction.{n}": np.ascontiguousarray(vector.directions[n], dtype=np.float32) for n in vector.layers}
    return {
        JSON_NAME: (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
        TENSORS_NAME: save_safetensors(tensors),
    }


def save_control(vector: ControlVector, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in control_files(vector).items():
        (directory / name).write_bytes(data)
