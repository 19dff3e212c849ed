"""The divergence meter: KL(p_on || p_base) at every position of a reply, measured while it is generated.

`AuditMeter` observes the runtime's decoder (`Decoder.observer`): while auditing a reply made with the overlay or
the control vector on (or both: whatever is on is measured), it feeds the same tokens in lockstep to a second,
base-only decoder (its own llama.cpp context on the same model file, loaded on first use, on which no control
vector is ever set: llama.cpp's control vector belongs to one context) and compares the two next-token
distributions before the sampler sees them. The runtime's decoder is untouched: the reply is the same token for
token whether the meter runs or not; what it costs is one more forward pass per token. The measure itself:
`runtime/divergence.py`.
"""

from collections.abc import Collection
from typing import Optional

import numpy as np

from ..overlay.loadable import Loadable
from ..runtime.decoder import Decoder
from ..runtime.divergence import Divergence, kl_divergence
from ..runtime.llama import LlamaEngine
from ..runtime.session import Runtime


class AuditMeter:
    """A step observer of the runtime's decoder with an optional base-distribution shadow; `kl` holds the last reply's values."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime
        self.enabled = False
        self.base: Optional[Decoder] = None
        self.kl: Optional[list[float]] = None  # None: the last reply was not audited

    @classmethod
    def install(cls, runtime: Runtime) -> "AuditMeter":
        meter = runtime.decoder.observer = cls(runtime)
        return meter

    def prefilled(self, tokens: list[int], on: Collection[Loadable], logits: np.ndarray) -> None:
        if not (self.enabled and on):
            self.kl = None  # all off: the reply *is* the base's, there is nothing to measure
            return
        engine = self._runtime.engine
        if self.base is None:
            shadow = LlamaEngine(self._runtime.model.path, engine.settings.replace(sequences=1))  # where the reply is computed
            self.base = Decoder(shadow, lambda: self._runtime.embeddings)
        self.kl = None
        with self.base.engine.stop_on(engine.stopping):  # a kill stops the shadow's prefill as it does the reply's
            base_logits = self.base.prefill(tokens)
        self.kl = [kl_divergence(logits, base_logits)]

    def stepped(self, token: int, logits: np.ndarray) -> None:
        if self.kl is not None and self.base is not None:  # `prefilled` starts `kl` only after it has made `base`
            self.kl.append(kl_divergence(logits, self.base.step(token)))

    def reset(self) -> None:
        if self.base is not None:
            self.base.reset()

    def divergence(self) -> Optional[Divergence]:
        return Divergence.of(self.kl) if self.kl else None

    def close(self) -> None:
        if self.base is not None:
            self.base.engine.close()
            self.base = None
