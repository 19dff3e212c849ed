"""The overlay's two files, `overlay.json` + `overlay.safetensors`, and the rules that admit them.

An overlay is admitted only if every rule holds; each rule is one small
function that raises `OverlayRejected` naming the fault (rule 5: `BindingMismatch`):

1. each file is under its size cap;
2. `overlay.json` is UTF-8 JSON (`untrusted_json`: nesting capped), an object with exactly the known keys;
3. `format` is `takens-lora/1`; hidden size, rank, delays, alpha, activation
   and `base_model_sha256` are well-formed and within bounds;
4. `overlay.safetensors` parses, holds exactly A, W, B, all float32, with the
   shapes the JSON declares, and every value is finite;
5. it is bound to the active base: same `base_model_sha256`, same hidden size.

Loading works on bytes, so a decrypted overlay never needs to touch the disk.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ..errors import BindingMismatch, OverlayRejected
from ..untrusted_json import JsonRejected, load_untrusted
from .params import ACTIVATIONS, OverlayParams

FORMAT = "takens-lora/1"
JSON_NAME, TENSORS_NAME = "overlay.json", "overlay.safetensors"
MAX_JSON_BYTES = 64 * 1024
MAX_TENSORS_BYTES = 256 * 1024 * 1024
MAX_RANK, MAX_DELAYS, MAX_DELAY, MAX_HIDDEN = 1024, 64, 4096, 65536
REQUIRED_KEYS = {"format", "hidden_size", "rank", "delays", "alpha", "activation", "base_model_sha256"}
OPTIONAL_KEYS = {"training"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Overlay:
    params: OverlayParams
    base_model_sha256: str
    training: dict = field(default_factory=dict)


def _check_size(name: str, data: bytes, cap: int) -> None:
    if len(data) > cap:
        raise OverlayRejected(f"{name}: {len(data)} bytes exceeds the {cap}-byte cap")


def _parse_json(data: bytes) -> dict:
    try:
        meta = load_untrusted(data)
    except JsonRejected as e:
        raise OverlayRejected(f"{JSON_NAME}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict):
        raise OverlayRejected(f"{JSON_NAME}: must be a JSON object")
    missing, unknown = REQUIRED_KEYS - meta.keys(), meta.keys() - REQUIRED_KEYS - OPTIONAL_KEYS
    if missing:
        raise OverlayRejected(f"{JSON_NAME}: missing keys {sorted(missing)}")
    if unknown:
        raise OverlayRejected(f"{JSON_NAME}: unknown keys {sorted(unknown)}")
    return meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(meta: dict) -> None:
    def bad(what: str):
        raise OverlayRejected(f"{JSON_NAME}: {what}")

    if meta["format"] != FORMAT:
        bad(f"format {meta['format']!r} is not {FORMAT!r}")
    if not (_is_int(meta["hidden_size"]) and 0 < meta["hidden_size"] <= MAX_HIDDEN):
        bad(f"hidden_size must be an integer in 1..{MAX_HIDDEN}")
    if not (_is_int(meta["rank"]) and 0 < meta["rank"] <= MAX_RANK):
        bad(f"rank must be an integer in 1..{MAX_RANK}")
    delays = meta["delays"]
    if not (
        isinstance(delays, list)
        and 0 < len(delays) <= MAX_DELAYS
        and all(_is_int(t) for t in delays)
        and delays[0] == 0
        and all(a < b for a, b in zip(delays, delays[1:]))
        and delays[-1] <= MAX_DELAY
    ):
        bad(f"delays must be strictly increasing integers starting at 0, at most {MAX_DELAYS} of them, each <= {MAX_DELAY}")
    alpha = meta["alpha"]
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        bad("alpha must be a finite number")
    if meta["activation"] not in ACTIVATIONS:
        bad(f"activation must be one of {list(ACTIVATIONS)}")
    if not (isinstance(meta["base_model_sha256"], str) and _SHA256.fullmatch(meta["base_model_sha256"])):
        bad("base_model_sha256 must be 64 lowercase hex digits")
    if not isinstance(meta.get("training", {}), dict):
        bad("training must be an object")


def _parse_tensors(data: bytes, meta: dict) -> dict[str, np.ndarray]:
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error types for every malformed input
        raise OverlayRejected(f"{TENSORS_NAME}: not a valid safetensors file ({e})") from None
    if set(tensors) != {"A", "W", "B"}:
        raise OverlayRejected(f"{TENSORS_NAME}: must hold exactly tensors A, W, B, found {sorted(tensors)}")
    d, r, k = meta["hidden_size"], meta["rank"], len(meta["delays"])
    for name, shape in (("A", (r, d)), ("W", (k, r)), ("B", (d, r))):
        t = tensors[name]
        if t.dtype != np.float32:
            raise OverlayRejected(f"{TENSORS_NAME}: {name} is {t.dtype}, must be float32")
        if t.shape != shape:
            raise OverlayRejected(f"{TENSORS_NAME}: {name} has shape {t.shape}, must be {shape}")
        if not np.isfinite(t).all():
            raise OverlayRejected(f"{TENSORS_NAME}: {name} holds NaN or infinite values")
    return tensors


def _check_binding(meta: dict, base_sha256: str, hidden_size: int) -> None:
    if meta["base_model_sha256"] != base_sha256:
        raise BindingMismatch(f"overlay is bound to base {meta['base_model_sha256']}, the active base is {base_sha256}")
    if meta["hidden_size"] != hidden_size:
        raise BindingMismatch(f"overlay hidden_size {meta['hidden_size']} != base hidden size {hidden_size}")


def load_overlay(json_bytes: bytes, tensor_bytes: bytes, *, base_sha256: str, hidden_size: int) -> Overlay:
    """Admit an overlay for the active base, or raise `OverlayRejected` / `BindingMismatch`."""
    _check_size(JSON_NAME, json_bytes, MAX_JSON_BYTES)
    _check_size(TENSORS_NAME, tensor_bytes, MAX_TENSORS_BYTES)
    meta = _parse_json(json_bytes)
    _check_header(meta)
    tensors = _parse_tensors(tensor_bytes, meta)
    _check_binding(meta, base_sha256, hidden_size)
    params = OverlayParams(**tensors, delays=tuple(meta["delays"]), alpha=float(meta["alpha"]), activation=meta["activation"])
    return Overlay(params, meta["base_model_sha256"], meta.get("training", {}))


def load_overlay_dir(directory: Path, *, base_sha256: str, hidden_size: int) -> Overlay:
    return load_overlay(
        (directory / JSON_NAME).read_bytes(),
        (directory / TENSORS_NAME).read_bytes(),
        base_sha256=base_sha256,
        hidden_size=hidden_size,
    )


def overlay_files(overlay: Overlay) -> dict[str, bytes]:
    """The two files' bytes, as another tool could write them from the format description."""
    p = overlay.params
    meta = {
        "format": FORMAT,
        "hidden_size": p.hidden_size,
        "rank": p.rank,
        "delays": list(p.delays),
        "alpha": p.alpha,
        "activation": p.activation,
        "base_model_sha256": overlay.base_model_sha256,
        "training": overlay.training,
    }
    return {
        JSON_NAME: (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
        TENSORS_NAME: save_safetensors({"A": p.A, "W": p.W, "B": p.B}),
    }


def save_overlay(overlay: Overlay, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in overlay_files(overlay).items():
        (directory / name).write_bytes(data)
