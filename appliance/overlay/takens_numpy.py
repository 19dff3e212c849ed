"""The overlay in numpy: what the llama.cpp decode loop runs.

Two forms that agree to float32 rounding at every position:
  `apply_sequence`  the whole context at once (prefill);
  `OverlayStream`   a token or many at a time, keeping the last max(tau) readings u.
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
    """Incremental form: feed embeddings in order, any number at a time; it keeps the last max(tau) readings u.

    However the embeddings are split into calls, each output is bit for bit the same (the decoder relies on it:
    a prefill and the steps after it give one whole prefill's inputs). So the two products are stacks of
    mat-vecs (`_mat_vecs`): numpy makes one BLAS mat-vec call a row, the call a single token's product makes,
    where a matrix product over the rows (E @ A.T) would round differently. Everything between them is
    elementwise, so computing it for many rows at once changes no bit.
    """

    def __init__(self, p: OverlayParams):
        self.p = p
        self.back = max(p.delays)  # readings needed besides u_t: u_{t - 1} .. u_{t - max tau}
        self.past = np.zeros((self.back, p.rank), dtype=np.float32)  # (back, r) readings before t, the oldest first
        self.t = 0  # number of embeddings consumed
        self._mix = list(zip(p.delays, p.W))  # (tau, W[k]): read once, not at every call of a decode step
        self._scale = np.float32(p.scale)

    def steps(self, E: np.ndarray) -> np.ndarray:
        """E (n, d) -> E' (n, d), continuing the stream."""
        p, n, t0, back = self.p, len(E), self.t, self.back
        R = np.concatenate([self.past, _mat_vecs(p.A, E)])  # (back + n, r) readings of positions t0 - back .. t0 + n - 1
        S = np.zeros((n, R.shape[1]), dtype=np.float32)  # (n, r)
        for tau, w in self._mix:
            first = max(0, tau - t0)  # s_t += W[k] * u_{t - tau}; positions before the start read nothing
            S[first:] += w * R[back + first - tau : back + n - tau]
        self.past = R[n:]
        self.t += n
        H = activate(S, p.activation)  # (n, r)
        return E + self._scale * _mat_vecs(p.B, H)

    def resume(self, E_before: np.ndarray, t: int) -> None:
        """Restart at position t, given the embeddings of (at least the last max tau) tokens before it."""
        tail = E_before[max(0, len(E_before) - self.back) :]
        self.past = np.zeros_like(self.past)  # positions before the start are never read
        self.past[self.back - len(tail) :] = _mat_vecs(self.p.A, tail)
        self.t = t


def _mat_vecs(M: np.ndarray, X: np.ndarray) -> np.ndarray:
    """M (m, k), X (n, k) -> (n, m): M @ x for each row x, one BLAS mat-vec call each, as for a single row."""
    return (M @ X[:, :, None])[:, :, 0]
