"""llama.cpp's own control-vector GGUF, out and in: how vectors from `cvector-generator` or repeng come and go.

The file: architecture `controlvector`, `controlvector.model_hint` (the base's architecture),
`controlvector.layer_count`, and one float32 1-D tensor `direction.L` per steered block L >= 1,
added as it is (llama.cpp scales it only when told on its command line). So:

- export writes `strength * direction.L`: llama.cpp loading the file unscaled steers exactly as we do;
- import reads each tensor as a direction with strength 1, bound to the base the caller names (the
  GGUF itself names no base, only an architecture), and admits it by the same rules as
  `control.safetensors` (`control.check_directions`, `control.check_binding`).

llama.cpp's `cvector-generator` computes block i's vector and stores it as `direction.{i+1}`; the file
cannot tell, so an imported vector is applied where its tensor name says, as llama.cpp does.
"""

import hashlib
import re
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from .control import MAX_LAYER, ControlVector, ControlVectorRejected, check_binding, check_directions
from .item_files import MAX_HIDDEN

ARCH = "controlvector"
MAX_GGUF_BYTES = 64 * 1024 * 1024
_DIRECTION = re.compile(r"direction\.([0-9]{1,4})")


def export_gguf(vector: ControlVector, path: Path, model_hint: str) -> None:
    """Write the vector as llama.cpp reads it (`--control-vector FILE`, or `llama_set_adapter_cvec` after loading)."""
    writer = GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
    for layer in vector.layers:
        writer.add_tensor(f"direction.{layer}", np.float32(vector.strength) * vector.directions[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _read(path: Path) -> GGUFReader:
    size = path.stat().st_size
    if size > MAX_GGUF_BYTES:
        raise ControlVectorRejected(f"{path.name}: {size} bytes exceeds the {MAX_GGUF_BYTES}-byte cap")
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError ... for malformed files
        raise ControlVectorRejected(f"{path.name}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _architecture(reader: GGUFReader) -> str:
    field = reader.get_field("general.architecture")
    try:
        return field.contents() if field is not None else ""
    except Exception:  # a field of another type than a string
        return ""


def _directions(reader: GGUFReader, name: str) -> dict[int, np.ndarray]:
    directions: dict[int, np.ndarray] = {}
    for t in reader.tensors:
        m = _DIRECTION.fullmatch(t.name)
        if m is None:
            raise ControlVectorRejected(f"{name}: tensor {t.name!r} is not a direction.L")
        layer = int(m.group(1))
        if not 1 <= layer <= MAX_LAYER or layer in directions:
            raise ControlVectorRejected(f"{name}: {t.name} is out of 1..{MAX_LAYER} or appears twice")
        if t.tensor_type != GGMLQuantizationType.F32 or len(t.shape) != 1 or not 0 < int(t.shape[0]) <= MAX_HIDDEN:
            raise ControlVectorRejected(f"{name}: {t.name} must be a float32 vector of length 1..{MAX_HIDDEN}")
        directions[layer] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not directions:
        raise ControlVectorRejected(f"{name}: no direction tensors")
    return directions


def import_gguf(path: Path, *, base_sha256: str, hidden_size: int, n_layer: int) -> ControlVector:
    """Admit a llama.cpp control-vector GGUF for the active base, or raise `ControlVectorRejected` / `BindingMismatch`."""
    reader = _read(path)
    arch = _architecture(reader)
    if arch != ARCH:
        raise ControlVectorRejected(f"{path.name}: architecture {arch!r} is not {ARCH!r}")
    directions = _directions(reader, path.name)
    lengths = {len(d) for d in directions.values()}
    if len(lengths) != 1:
        raise ControlVectorRejected(f"{path.name}: directions of different lengths {sorted(lengths)}")
    check_directions(path.name, directions, lengths.pop(), 1.0)
    hint = reader.get_field(f"{ARCH}.model_hint")
    provenance = {
        "method": "imported from a llama.cpp control-vector GGUF",
        "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "model_hint": str(hint.contents()) if hint is not None else None,
    }
    vector = ControlVector(dict(sorted(directions.items())), 1.0, base_sha256, provenance)
    check_binding(vector, base_sha256, hidden_size, n_layer)
    return vector
