"""Rows of the base model's token-embedding table, dequantised exactly as llama.cpp does.

The table stays quantised and memory-mapped; only the rows asked for are
dequantised, so a lookup costs O(tokens), not O(vocabulary).

Finding the table: `gguf.GGUFReader` materialises every metadata field,
including ~100k tokenizer strings, which takes seconds; we only need one
tensor's offset, so `_locate` walks the header with the `gguf` package's own
type constants and skips what it does not need (tens of milliseconds).
"""

import mmap
import struct
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from ..errors import ModelFailed

TOKEN_EMBEDDING = "token_embd.weight"
_SCALAR: dict[int, str] = {  # keyed by the value types, which are ints in the file
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}  # fmt: skip


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
            else:
                for _ in range(count):
                    self.skip_value(item)
        else:
            self.pos += struct.calcsize(_SCALAR[vtype])


def _locate(buf, name: str) -> tuple[int, GGMLQuantizationType, tuple[int, ...]]:
    """(absolute data offset, quantisation type, dims) of tensor `name` in a GGUF v2/v3 file."""
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] not in (2, 3):
        raise ModelFailed("not a GGUF v2/v3 file")
    c.pos = 8
    n_tensors, n_kv = c.read("Q"), c.read("Q")
    alignment = 32
    for _ in range(n_kv):
        key, vtype = c.string(), c.read("I")
        if key == b"general.alignment":
            alignment = c.read("I")
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
    return data_start + found[0], found[1], found[2]


class EmbeddingTable:
    def __init__(self, gguf_path: Path):
        with open(gguf_path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            offset, self._qtype, (self.n_embd, self.n_vocab) = _locate(self._map, TOKEN_EMBEDDING)
        except (ModelFailed, struct.error, ValueError) as e:
            raise ModelFailed(f"{gguf_path}: cannot find the token embeddings ({e})") from None
        block, block_bytes = GGML_QUANT_SIZES[self._qtype]
        row_bytes = self.n_embd // block * block_bytes
        # (n_vocab, row_bytes) raw quantised rows, straight from the page cache
        self._raw = np.frombuffer(self._map, dtype=np.uint8, count=self.n_vocab * row_bytes, offset=offset).reshape(
            self.n_vocab, row_bytes
        )

    def rows(self, tokens) -> np.ndarray:
        """tokens (n,) -> embeddings (n, n_embd) float32"""
        return dequantize(self._raw[np.asarray(tokens, dtype=np.int64)], self._qtype).astype(np.float32, copy=False)
