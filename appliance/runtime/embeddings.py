"""Rows of the base model's token-embedding table, dequantised exactly as llama.cpp does.

The table stays quantised and memory-mapped; only the rows asked for are
dequantised, so a lookup costs O(tokens), not O(vocabulary).
"""

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from ..errors import ApplianceError

TOKEN_EMBEDDING = "token_embd.weight"


class EmbeddingTable:
    def __init__(self, gguf_path: Path):
        reader = GGUFReader(str(gguf_path))
        tensor = next((t for t in reader.tensors if t.name == TOKEN_EMBEDDING), None)
        if tensor is None:
            raise ApplianceError(f"{gguf_path}: no {TOKEN_EMBEDDING} tensor")
        self._raw = tensor.data  # (n_vocab, bytes or values per row), memory-mapped
        self._qtype = tensor.tensor_type
        self.n_vocab, self.n_embd = int(tensor.shape[1]), int(tensor.shape[0])

    def rows(self, tokens) -> np.ndarray:
        """tokens (n,) -> embeddings (n, n_embd) float32"""
        return dequantize(self._raw[np.asarray(tokens, dtype=np.int64)], self._qtype).astype(np.float32, copy=False)
