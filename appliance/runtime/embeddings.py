"""Rows of the base model's token-embedding table, dequantised exactly as llama.cpp does.

The table stays quantised and memory-mapped; only the rows asked for are
dequantised, so a lookup costs O(tokens), not O(vocabulary). The rows of the
tokens seen are kept dequantised (up to `ROW_CACHE_BYTES`): an overlay-on decode
step asks for one row, whose dequantisation through `gguf.quants` costs more
than everything else Python does for that token.

The rows are what llama.cpp's graph reads after its token lookup. Gemma 3's
graph multiplies the looked-up rows by sqrt(n_embd), but only for token input,
never for embeddings given through `batch.embd` (docs/design.md, "Facts about
llama.cpp's embedding input"); so for it the rows come scaled here, in float32
as llama.cpp scales them, and the overlay acts on what the model reads, as in
transformers, whose Gemma 3 embedding module applies the same scale. Gemma
and Gemma 2 scale every input inside the graph, rows or tokens: theirs stay
as stored.

Finding the table: `gguf.GGUFReader` materialises every metadata field,
including ~100k tokenizer strings, which takes seconds; we only need one
tensor's offset, so `_locate` walks the header with the `gguf` package's own
type constants and skips what it does not need (tens of milliseconds).
"""

import mmap
import struct
from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from ..errors import ModelFailed

TOKEN_EMBEDDING = "token_embd.weight"
ROW_CACHE_BYTES = 32 << 20  # dequantised rows kept: 14,000 of the embedded model's, 2,048 of an 8B base's
# llama.cpp's graphs that scale token input, and only token input, by sqrt(n_embd): `ubatch.token ? sqrtf(n_embd) : 1.0f`
SCALED_BY_SQRT_N_EMBD = ("gemma3",)
_SCALAR: dict[int, str] = {  # keyed by the value types, which are ints in the file
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}  # fmt: skip
_INTEGER = {t for t, fmt in _SCALAR.items() if fmt in "BbHhIiQq"}
_LENGTH = struct.Struct("<Q")  # a string's byte count


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self.read("Q")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def skip_value(self, vtype: int) -> None:
        if vtype == GGUFValueType.STRING:
            n = self.read("Q")  # read before `+=` loads pos
            self.pos += n
        elif vtype == GGUFValueType.ARRAY:
            item, count = self.read("I"), self.read("Q")
            if item in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[item])
            elif item == GGUFValueType.STRING:  # a vocabulary (262k strings in Gemma): one tight loop, not a call each
                length, buf, pos = _LENGTH.unpack_from, self.buf, self.pos
                for _ in range(count):
                    pos += 8 + length(buf, pos)[0]
                self.pos = pos
            else:
                for _ in range(count):
                    self.skip_value(item)
        else:
            self.pos += struct.calcsize(_SCALAR[vtype])


def _locate(buf, name: str) -> tuple[int, GGMLQuantizationType, tuple[int, ...], str, dict[str, int]]:
    """(absolute data offset, quantisation type, dims) of tensor `name` in a GGUF v2/v3 file, its architecture
    and the architecture's integer metadata, without the `<arch>.` prefix (`block_count`, llama.cpp's n_layer;
    `attention.head_count`, ...)."""
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] not in (2, 3):
        raise ModelFailed("not a GGUF v2/v3 file")
    c.pos = 8
    n_tensors, n_kv = c.read("Q"), c.read("Q")
    alignment, architecture = 32, ""
    numbers: dict[bytes, int] = {}  # the architecture may come after its keys
    for _ in range(n_kv):
        key, vtype = c.string(), c.read("I")
        if key == b"general.alignment":
            alignment = c.read("I")
        elif key == b"general.architecture" and vtype == GGUFValueType.STRING:
            architecture = c.string().decode("utf-8", errors="replace")
        elif vtype in _INTEGER:
            numbers[key] = c.read(_SCALAR[vtype])
        else:
            c.skip_value(vtype)
    found = None
    for _ in range(n_tensors):
        tname = c.string()
        dims = tuple(c.read("Q") for _ in range(c.read("I")))
        qtype, offset = GGMLQuantizationType(c.read("I")), c.read("Q")
        if tname == name.encode():
            found = (offset, qtype, dims)
    if found is None:
        raise ModelFailed(f"no {name} tensor")
    data_start = -(-c.pos // alignment) * alignment
    prefix = f"{architecture}.".encode()
    ours = {k[len(prefix) :].decode("utf-8", errors="replace"): v for k, v in numbers.items() if k.startswith(prefix)}
    return data_start + found[0], found[1], found[2], architecture, ours


def architecture_of(gguf_path: Path) -> str:
    """`general.architecture` of a GGUF file, from its header alone."""
    table = EmbeddingTable(gguf_path)
    try:
        return table.architecture
    finally:
        table.close()


def base_shape(gguf_path: Path) -> tuple[int, int]:
    """(n_embd, n_layer) of a base model as llama.cpp reads them, from its GGUF header alone (nothing is
    loaded): the hidden size from the token-embedding table's shape, the blocks from `<arch>.block_count`."""
    table = EmbeddingTable(gguf_path)
    try:
        if table.n_layer is None:
            raise ModelFailed(f"{gguf_path}: no {table.architecture}.block_count in the GGUF metadata")
        return table.n_embd, table.n_layer
    finally:
        table.close()


class EmbeddingTable:
    def __init__(self, gguf_path: Path):
        with open(gguf_path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            offset, self._qtype, (self.n_embd, self.n_vocab), self.architecture, self.numbers = _locate(
                self._map, TOKEN_EMBEDDING
            )
        except (ModelFailed, struct.error, ValueError) as e:
            self._map.close()
            raise ModelFailed(f"{gguf_path}: cannot find the token embeddings ({e})") from None
        self.n_layer: Optional[int] = self.numbers.get("block_count")
        # float32 sqrt of float32(n_embd), as llama.cpp's sqrtf(n_embd)
        self.scale = np.sqrt(np.float32(self.n_embd)) if self.architecture in SCALED_BY_SQRT_N_EMBD else None
        block, block_bytes = GGML_QUANT_SIZES[self._qtype]
        row_bytes = self.n_embd // block * block_bytes
        # (n_vocab, row_bytes) raw quantised rows, straight from the page cache
        self._raw = np.frombuffer(self._map, dtype=np.uint8, count=self.n_vocab * row_bytes, offset=offset).reshape(
            self.n_vocab, row_bytes
        )
        self._seen: dict[int, np.ndarray] = {}  # token id -> its row, for the tokens seen
        self._seen_max = max(1, ROW_CACHE_BYTES // (4 * self.n_embd))

    def rows(self, tokens) -> np.ndarray:
        """tokens (n,) -> embeddings (n, n_embd) float32, as the model's graph reads them"""
        if len(tokens) == 0:  # gguf's K-quant dequantisers fail on no rows (a prefill that keeps nothing asks for none)
            return np.zeros((0, self.n_embd), dtype=np.float32)
        seen, wanted = self._seen, dict.fromkeys(tokens)
        new = [t for t in wanted if t not in seen]
        if new and len(seen) + len(new) > self._seen_max:
            seen.clear()  # the simplest bound: these rows are dequantised again in one call
            new = list(wanted)
        if new:
            seen.update(zip(new, self._dequantise(new)))
        return np.array([seen[t] for t in tokens])  # a copy: the caller owns it (np.stack costs 4x for one row)

    def _dequantise(self, tokens: list) -> np.ndarray:
        # Row by row elementwise: a row's values do not depend on the others dequantised with it.
        rows = dequantize(self._raw[np.asarray(tokens, dtype=np.int64)], self._qtype).astype(np.float32, copy=False)
        return rows * self.scale if self.scale is not None else rows

    def close(self) -> None:
        """Unmap the file (the rows view goes first: a mapping with a live view cannot close)."""
        del self._raw
        self._seen.clear()
        self._map.close()
