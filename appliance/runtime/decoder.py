"""The KV cache, kept consistent with the tokens it holds and the overlay state they were computed in.

Overlay off: token ids go to llama.cpp as they are. Overlay on: each token id
becomes its dequantised embedding row, the overlay transforms it, and the
result goes in through `batch.embd`.

The cache is reused only for the longest prefix computed in the *same*
overlay state; a state change empties it and the next prefill recomputes the
whole context, so a reply after a toggle equals a fresh session's.
"""

from collections.abc import Callable
from typing import Optional

import numpy as np

from ..overlay.params import OverlayParams
from ..overlay.takens_numpy import OverlayStream
from .embeddings import EmbeddingTable
from .llama import LlamaEngine


class Decoder:
    def __init__(self, engine: LlamaEngine, embeddings: Callable[[], EmbeddingTable]):
        self.engine = engine
        self._embeddings = embeddings  # loaded on first use: overlay-off chats never need it
        self.cached: list[int] = []
        self.overlay: Optional[OverlayParams] = None  # the state the cache was computed in
        self.stream: Optional[OverlayStream] = None
        self.last_prefill_tokens = 0  # how many positions the last prefill had to compute

    def reset(self) -> None:
        """Empty the cache: the next prefill computes everything, as in a new process."""
        self.engine.forget_from(0)
        self.cached = []

    def prefill(self, tokens: list[int], overlay: Optional[OverlayParams]) -> np.ndarray:
        """Make the cache hold exactly `tokens` under `overlay`; return the logits after the last token."""
        if overlay is not self.overlay:
            self.overlay, self.cached = overlay, []
            self.stream = OverlayStream(overlay) if overlay is not None else None
        keep = _common_prefix(self.cached, tokens)
        keep = min(keep, len(tokens) - 1)  # always decode at least one token to get fresh logits
        self.engine.forget_from(keep)
        self.cached = self.cached[:keep]
        if self.stream is not None:
            span = max(self.stream.p.delays)
            self.stream.resume(self._embeddings().rows(tokens[max(0, keep - span) : keep]), keep)
        self.last_prefill_tokens = len(tokens) - keep
        return self._feed(tokens[keep:])

    def step(self, token: int) -> np.ndarray:
        return self._feed([token])

    def _feed(self, tokens: list[int]) -> np.ndarray:
        pos0 = len(self.cached)
        if self.stream is None:  # no overlay
            self.engine.decode_tokens(tokens, pos0)
        else:
            # Always the incremental form, even for a whole context: the same tokens then give
            # bit-identical inputs however the context was split into prefill and steps.
            self.engine.decode_embeddings(self.stream.steps(self._embeddings().rows(tokens)), pos0)
        self.cached.extend(tokens)
        return self.engine.last_logits()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
