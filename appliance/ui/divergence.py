"""The divergence meter: KL(p_overlay || p_base) at every position of a reply, measured while it is generated.

The runtime's decoder is replaced by `AuditDecoder`, a `Decoder` that, while auditing a reply made
with the overlay or the control vector on (or both: whatever is on is measured), feeds the same
tokens in lockstep to a second, base-only decoder (its own llama.cpp context on the same model
file, loaded on first use, on which no control vector is ever set: llama.cpp's control vector
belongs to one context) and compares the two next-token distributions before the sampler sees them. The overlay decoder is untouched: the reply is the same
token for token whether the meter runs or not; what it costs is one more forward pass per token.

numpy, not the training package's torch version of the same formula: the chat path never loads torch.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..overlay.control import ControlVector
from ..overlay.params import OverlayParams
from ..runtime.decoder import Decoder
from ..runtime.llama import LlamaEngine
from ..runtime.session import Runtime


@dataclass(frozen=True)
class Divergence:
    """KL(overlay || base) over the positions of one reply, in nats (the provenance record's `divergence`)."""

    positions: int
    rmse: float
    max: float

    @classmethod
    def of(cls, kl: list[float]) -> "Divergence":
        values = np.asarray(kl, dtype=np.float64)
        return cls(len(values), float(np.sqrt(np.mean(values**2))), float(values.max()))

    def as_dict(self) -> dict:
        return {"measure": "kl(overlay||base)", "positions": self.positions, "rmse": self.rmse, "max": self.max}


def kl_divergence(logits_p: np.ndarray, logits_q: np.ndarray) -> float:
    """KL(softmax(p) || softmax(q)) in nats, in float64 so a near-identical pair gives ~0, not rounding noise."""
    lp, lq = _log_softmax(logits_p), _log_softmax(logits_q)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max()
    return z - np.log(np.exp(z).sum())


class AuditDecoder(Decoder):
    """The runtime's decoder with an optional base-distribution shadow; `kl` holds the last reply's values."""

    def __init__(self, runtime: Runtime):
        super().__init__(runtime.engine, lambda: runtime.embeddings)
        self._runtime = runtime
        self.enabled = False
        self.base: Optional[Decoder] = None
        self.kl: Optional[list[float]] = None  # None: the last reply was not audited

    @classmethod
    def install(cls, runtime: Runtime) -> "AuditDecoder":
        runtime.decoder = cls(runtime)
        return runtime.decoder

    def prefill(self, tokens: list[int], overlay: Optional[OverlayParams], control: Optional[ControlVector] = None) -> np.ndarray:
        logits = super().prefill(tokens, overlay, control)
        if not (self.enabled and (overlay is not None or control is not None)):
            self.kl = None  # both off: the reply *is* the base's, there is nothing to measure
            return logits
        if self.base is None:
            engine = LlamaEngine(
                self._runtime.model.path, self.engine.settings.replace(sequences=1)
            )  # where the reply is computed
            self.base = Decoder(engine, lambda: self._runtime.embeddings)
        self.kl = None
        with self.base.engine.stop_on(self.engine.stopping):  # a kill stops the shadow's prefill as it does the reply's
            base_logits = self.base.prefill(tokens, None)
        self.kl = [kl_divergence(logits, base_logits)]
        return logits

    def step(self, token: int) -> np.ndarray:
        logits = super().step(token)
        if self.kl is not None and self.base is not None:  # prefill starts `kl` only after it has made `base`
            self.kl.append(kl_divergence(logits, self.base.step(token)))
        return logits

    def reset(self) -> None:
        super().reset()
        if self.base is not None:
            self.base.reset()

    def divergence(self) -> Optional[Divergence]:
        return Divergence.of(self.kl) if self.kl else None

    def close(self) -> None:
        if self.base is not None:
            self.base.engine.close()
            self.base = None
