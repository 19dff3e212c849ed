"""The overlay in numpy: what the llama.cpp decode loop runs.

Two forms that agree to float32 rounding at every position:
  `apply_sequence`  the whole context at once (prefill);
  `OverlayStream`   one token at a time, keeping a ring of the last max(tau) readings u.
"""

import numpy as np

from .params import OverlayParams


def activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "identity":
        return x
    if name == "tanh":
        return np.tanh(x)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {name!r}")


def apply_sequence(p: OverlayParams, E: np.ndarray) -> np.ndarray:
    """E (T, d) -> E' (T, d) for a whole context starting at position 1."""
    T = E.shape[0]
    U = E @ p.A.T  # (T, r)
    S = np.zeros_like(U)  # (T, r)
    for k, tau in enumerate(p.delays):
        if tau < T:  # s_t += W[k] * u_{t - tau}; positions before the start read zeros
            S[tau:] += p.W[k] * U[: T - tau]
    return E + np.float32(p.scale) * (activate(S, p.activation) @ p.B.T)


class OverlayStream:
    """Incremental form: feed embeddings in order; each step is two small mat-vecs."""

    def __init__(self, p: OverlayParams):
        self.p = p
        self.span = max(p.delays) + 1  # readings needed: u_t .. u_{t - max tau}
        self.ring = np.zeros((self.span, p.rank), dtype=np.float32)  # (span, r)
        self.t = 0  # number of embeddings consumed

    def step(self, e: np.ndarray) -> np.ndarray:
        """e (d,) -> e' (d,)"""
        p = self.p
        self.ring[self.t % self.span] = p.A @ e
        s = np.zeros(p.rank, dtype=np.float32)
        for k, tau in enumerate(p.delays):
            if tau <= self.t:
                s += p.W[k] * self.ring[(self.t - tau) % self.span]
        self.t += 1
        return e + np.float32(p.scale) * (p.B @ activate(s, p.activation))

    def steps(self, E: np.ndarray) -> np.ndarray:
        """E (n, d) -> E' (n, d), continuing the stream."""
        out = np.empty_like(E)  # filled row by row: np.stack would cost more than a step's maths for one row
        for i, e in enumerate(E):
            out[i] = self.step(e)
        return out

    def resume(self, E_before: np.ndarray, t: int) -> None:
        """Restart at position t, given the embeddings of (at least the last max tau) tokens before it."""
        E_tail = E_before[len(E_before) - (self.span - 1) :] if len(E_before) >= self.span else E_before
        self.ring[:] = 0.0
        self.t = t - len(E_tail)
        for e in E_tail:
            self.ring[self.t % self.span] = self.p.A @ e
            self.t += 1
