"""A reply's divergence from the base: KL(p_on || p_base) at every position, and its summary.

numpy, not the training package's torch version of the same formula: the chat path never loads torch.
The meter that measures it while a reply is generated is the chat's (`ui/divergence.py`), a `StepObserver`
of the decoder; what it measured travels up typed (`service.Outcome`) into the journal record and the screen.
"""

from dataclasses import dataclass

import numpy as np


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
