"""The overlay's parameters as plain float32 arrays: what the file holds and both backends share."""

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("identity", "tanh", "silu")
DEFAULT_DELAYS = (0, 1, 2, 4, 8)


@dataclass(frozen=True)
class OverlayParams:
    A: np.ndarray  # (r, d)  reads the embedding
    W: np.ndarray  # (K, r)  mixes the delayed readings, one row per delay
    B: np.ndarray  # (d, r)  writes back into the embedding
    delays: tuple[int, ...]  # tau_0 = 0 < tau_1 < ... < tau_m, K = m + 1
    alpha: float
    activation: str

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.A.shape[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def random(
        cls,
        hidden_size: int,
        rank: int = 8,
        delays: tuple[int, ...] = DEFAULT_DELAYS,
        alpha: float = 8.0,
        activation: str = "tanh",
        seed: int = 0,
        b_scale: float = 0.05,
    ) -> "OverlayParams":
        """A seeded random overlay, for tests and demos until trained ones exist (`b_scale=0` gives the identity)."""
        rng = np.random.default_rng(seed)
        d, r, k = hidden_size, rank, len(delays)
        return cls(
            A=(rng.standard_normal((r, d)) / np.sqrt(d)).astype(np.float32),
            W=(rng.standard_normal((k, r)) / np.sqrt(k)).astype(np.float32),
            B=(rng.standard_normal((d, r)) * b_scale).astype(np.float32),
            delays=tuple(delays),
            alpha=float(alpha),
            activation=activation,
        )
