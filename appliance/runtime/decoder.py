"""The KV cache, kept consistent with the tokens it holds and the state (overlay, control vector) they were computed in.

Overlay off: token ids go to llama.cpp as they are. Overlay on: each token id
becomes its dequantised embedding row, the overlay transforms it, and the
result goes in through `batch.embd`.

One llama.cpp sequence per state, each remembering the tokens it holds and the
overlay and control vector they were computed with (the objects, or none):
  1. a prefill in a state uses the sequence that holds that state and makes it current;
  2. if none does, the least recently used sequence is emptied and given the state;
  3. it keeps the longest common prefix of what it holds and the new context,
     but never past the positions a prefill computed (`exact`): a reply's tokens
     were decoded one at a time, which rounds differently from a prefill
     (`llama.FLASH_ATTENTION`), so the next prefill reads them again;
  4. the rest is computed in batches of two or more tokens, which give bit for
     bit what one whole prefill gives on the CPU; on a GPU they do not
     (`LlamaEngine.batch_invariant`), so there nothing is kept: every prefill
     computes its whole context, as a fresh session's does (docs/design.md);
  5. the overlay's delay ring is rebuilt from the tokens before the kept prefix's end;
  6. a feed stopped part-way (`LlamaEngine.stop_on`: a kill, the chat's stop) adds nothing
     to its sequence's tokens; what llama.cpp kept of it lies past them, and the next
     prefill drops it (rule 3) and rebuilds the ring (rule 5).
So every prefill leaves its sequence exactly as a fresh session's would be, and
a reply, after any switches and whatever the window dropped, is the reply of a
fresh session in that state. A switch reads only what that state's sequence
has not seen: its own last reply and the exchanges since. With two sequences,
switching one thing back and forth (the overlay, or the control vector) always
finds the state's sequence; a third state evicts one; with an engine of one
sequence rule 2 empties it at every switch.

The control vector is set on the whole llama.cpp context, but it only enters
the positions being computed: what the cache holds stays as it was computed.
Every batch goes to one sequence, so the decoder sets the vector of the state
it is computing (`LlamaEngine.set_control`) before the prefill, and each
sequence only ever grows under its own vector.

A `StepObserver` (the chat's divergence meter) sees each prefill's and step's logits as they are made, before
the sampler does; it only reads them, so what it does cannot change a reply.
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..overlay.loadable import Loadable
from ..overlay.params import OverlayParams
from ..overlay.takens_numpy import OverlayStream
from .embeddings import EmbeddingTable
from .llama import LlamaEngine


class StepObserver(Protocol):
    """Told of every forward pass of the decoder, with the logits it left (read-only)."""

    def prefilled(self, tokens: list[int], on: Collection[Loadable], logits: np.ndarray) -> None: ...

    def stepped(self, token: int, logits: np.ndarray) -> None: ...

    def reset(self) -> None: ...


@dataclass
class KVSequence:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what its cells hold, position by position
    exact: int = 0  # leading positions computed by prefills: what a fresh prefill computes
    overlay: Optional[OverlayParams] = None  # the state those tokens were computed in
    control: Optional[ControlVector] = None  # ... and the control vector they were computed under
    stream: Optional[OverlayStream] = None  # the overlay's delay ring, positioned after `tokens`
    used: int = 0  # when a prefill last used it, for rule 2


class Decoder:
    def __init__(self, engine: LlamaEngine, embeddings: Callable[[], EmbeddingTable]):
        self.engine = engine
        self._embeddings = embeddings  # loaded on first use: overlay-off chats never need it
        self.sequences = [KVSequence(seq_id) for seq_id in range(min(engine.n_seq, 2))]
        self.current = self.sequences[0]
        self.last_prefill_tokens = 0  # how many positions the last prefill had to compute
        self.control: Optional[ControlVector] = None  # the one set on the engine
        self.observer: Optional[StepObserver] = None
        self._prefills = 0

    def reset(self) -> None:
        """Empty every sequence and clear the control vector: the next prefill computes everything, as in a new process."""
        self.engine.forget_all()
        self._set_control(None)
        self.sequences = [KVSequence(seq.seq_id) for seq in self.sequences]
        self.current = self.sequences[0]
        if self.observer is not None:
            self.observer.reset()

    def prefill(self, tokens: list[int], on: Collection[Loadable] = ()) -> np.ndarray:
        """Make the current sequence hold exactly `tokens` with the items `on` switched on; return the logits after the last token."""
        # The one place the two kinds differ: an overlay transforms the input embeddings, a control vector is
        # set on the llama.cpp context.
        overlay = next((w.params for w in on if isinstance(w, Overlay)), None)
        control = next((w for w in on if isinstance(w, ControlVector)), None)
        self._set_control(control)
        seq = self.current = self._sequence_for(overlay, control)
        # At least two tokens are computed (fresh logits, and never a batch of one), unless the context is one token.
        keep = min(_common_prefix(seq.tokens, tokens), seq.exact, max(0, len(tokens) - 2))
        self.engine.forget_from(keep, seq.seq_id)
        del seq.tokens[keep:]
        if seq.stream is not None:
            span = max(seq.stream.p.delays)
            seq.stream.resume(self._embeddings().rows(tokens[max(0, keep - span) : keep]), keep)
        self.last_prefill_tokens = len(tokens) - keep
        logits = self._feed(tokens[keep:])
        seq.exact = (len(tokens) if len(tokens) - keep != 1 else keep) if self.engine.batch_invariant else 0
        if self.observer is not None:
            self.observer.prefilled(tokens, on, logits)
        return logits

    def _sequence_for(self, overlay: Optional[OverlayParams], control: Optional[ControlVector]) -> KVSequence:
        """Rules 1 and 2: the sequence that holds this state, or the least recently used one, emptied for it."""
        self._prefills += 1
        held = [s for s in self.sequences if s.overlay is overlay and s.control is control]
        seq = max(held, key=lambda s: len(s.tokens)) if held else min(self.sequences, key=lambda s: s.used)
        if not held:
            self.engine.forget_from(0, seq.seq_id)
            seq.tokens, seq.exact, seq.overlay, seq.control = [], 0, overlay, control
            seq.stream = OverlayStream(overlay) if overlay is not None else None
        seq.used = self._prefills
        return seq

    def _set_control(self, control: Optional[ControlVector]) -> None:
        if control is not self.control:
            self.engine.set_control(control.applied(self.engine.n_layer) if control is not None else None)
            self.control = control

    def step(self, token: int) -> np.ndarray:
        logits = self._feed([token])
        if self.observer is not None:
            self.observer.stepped(token, logits)
        return logits

    def _feed(self, tokens: list[int]) -> np.ndarray:
        seq = self.current
        pos0 = len(seq.tokens)
        if seq.stream is None:
            self.engine.decode_tokens(tokens, pos0, seq=seq.seq_id)
        else:
            # Always the incremental form, even for a whole context: the same tokens then give
            # bit-identical inputs however the context was split into prefill and steps.
            self.engine.decode_embeddings(seq.stream.steps(self._embeddings().rows(tokens)), pos0, seq=seq.seq_id)
        seq.tokens.extend(tokens)
        return self.engine.last_logits()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
