"""What an overlay's and a control vector's files share: a JSON header and a safetensors body, each under a cap.

`ItemFiles` describes one kind's pair (names, caps, keys, the error it raises); its readers are the rules both
kinds apply in the same order (`files.py`, `control.py` list them): the size caps, the header's JSON and keys,
the header fields both have, and each tensor's dtype, shape and finiteness. What differs (delays and rank, or
layers and strength) stays in each kind's own module.
"""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ..errors import Refused
from ..untrusted_json import JsonRejected, load_untrusted

MAX_HIDDEN = 65536
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ItemFiles:
    """One kind's two files and the error its refusals raise."""

    format: str
    json_name: str
    tensors_name: str
    max_json_bytes: int
    max_tensors_bytes: int
    required_keys: frozenset[str]
    object_key: str  # the one optional key: an object of free-form facts ("training", "provenance")
    rejected: Callable[[str], Refused]

    def header(self, json_bytes: bytes, tensor_bytes: bytes) -> dict:
        """Rules 1-2 and the part of rule 3 both kinds share: caps, JSON object, keys, format, hidden size, binding
        hash, the facts object."""
        self._check_size(self.json_name, json_bytes, self.max_json_bytes)
        self._check_size(self.tensors_name, tensor_bytes, self.max_tensors_bytes)
        meta = self._parse_json(json_bytes)
        if meta["format"] != self.format:
            self.bad_header(f"format {meta['format']!r} is not {self.format!r}")
        if not (is_int(meta["hidden_size"]) and 0 < meta["hidden_size"] <= MAX_HIDDEN):
            self.bad_header(f"hidden_size must be an integer in 1..{MAX_HIDDEN}")
        if not (isinstance(meta["base_model_sha256"], str) and _SHA256.fullmatch(meta["base_model_sha256"])):
            self.bad_header("base_model_sha256 must be 64 lowercase hex digits")
        if not isinstance(meta.get(self.object_key, {}), dict):
            self.bad_header(f"{self.object_key} must be an object")
        return meta

    def bad_header(self, what: str) -> NoReturn:
        raise self.rejected(f"{self.json_name}: {what}")

    def _check_size(self, name: str, data: bytes, cap: int) -> None:
        if len(data) > cap:
            raise self.rejected(f"{name}: {len(data)} bytes exceeds the {cap}-byte cap")

    def _parse_json(self, data: bytes) -> dict:
        try:
            meta = load_untrusted(data)
        except JsonRejected as e:
            raise self.rejected(f"{self.json_name}: not valid UTF-8 JSON ({e})") from None
        if not isinstance(meta, dict):
            raise self.rejected(f"{self.json_name}: must be a JSON object")
        missing, unknown = self.required_keys - meta.keys(), meta.keys() - self.required_keys - {self.object_key}
        if missing:
            raise self.rejected(f"{self.json_name}: missing keys {sorted(missing)}")
        if unknown:
            raise self.rejected(f"{self.json_name}: unknown keys {sorted(unknown)}")
        return meta

    def tensors(self, data: bytes) -> dict[str, np.ndarray]:
        try:
            return load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types for every malformed input
            raise self.rejected(f"{self.tensors_name}: not a valid safetensors file ({e})") from None

    def check_tensor(self, where: str, name: str, t: np.ndarray, shape: tuple[int, ...]) -> None:
        """float32, of `shape`, every value finite."""
        if t.dtype != np.float32:
            raise self.rejected(f"{where}: {name} is {t.dtype}, must be float32")
        if t.shape != shape:
            raise self.rejected(f"{where}: {name} has shape {t.shape}, must be {shape}")
        if not np.isfinite(t).all():
            raise self.rejected(f"{where}: {name} holds NaN or infinite values")

    def read_dir(self, directory: Path) -> tuple[bytes, bytes]:
        return (directory / self.json_name).read_bytes(), (directory / self.tensors_name).read_bytes()

    def files(self, meta: dict, tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
        """The two files' bytes, as another tool could write them from the format description."""
        return {
            self.json_name: (json.dumps({"format": self.format, **meta}, indent=2, sort_keys=True) + "\n").encode(),
            self.tensors_name: save_safetensors(tensors),
        }


def save_files(files: dict[str, bytes], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
