"""The overlay in torch: the trainable form, same maths as `takens_numpy`.

`TakensLoRA.forward` transforms a whole batch of sequences; `step` is the
incremental form, carrying a ring of the last max(tau) readings u.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .params import OverlayParams

_ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh, "silu": F.silu}


class TakensLoRA(nn.Module):
    def __init__(self, hidden_size: int, rank: int, delays: tuple[int, ...], alpha: float, activation: str):
        super().__init__()
        self.delays = tuple(delays)
        self.alpha, self.activation = float(alpha), activation
        self.A = nn.Parameter(torch.empty(rank, hidden_size))  # (r, d)
        self.W = nn.Parameter(torch.empty(len(delays), rank))  # (K, r)
        self.B = nn.Parameter(torch.zeros(hidden_size, rank))  # (d, r), zero: starts as the identity
        nn.init.normal_(self.A, std=hidden_size**-0.5)
        nn.init.normal_(self.W, std=len(delays) ** -0.5)

    @property
    def scale(self) -> float:
        return self.alpha / self.A.shape[0]

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        """E (batch, T, d) -> E' (batch, T, d); every sequence starts at position 1."""
        T = E.shape[1]
        U = E @ self.A.T  # (batch, T, r)
        S = torch.zeros_like(U)
        for k, tau in enumerate(self.delays):
            if tau < T:  # s_t += W[k] * u_{t - tau}
                S = S + F.pad(U[:, : T - tau], (0, 0, tau, 0)) * self.W[k]
        return E + self.scale * (_ACTIVATIONS[self.activation](S) @ self.B.T)

    def step(self, e: torch.Tensor, ring: torch.Tensor, t: int) -> torch.Tensor:
        """Incremental form. e (batch, d); ring (batch, max tau + 1, r), updated in place; t = tokens seen before e."""
        span = ring.shape[1]
        ring[:, t % span] = e @ self.A.T
        s = torch.zeros_like(ring[:, 0])
        for k, tau in enumerate(self.delays):
            if tau <= t:
                s = s + self.W[k] * ring[:, (t - tau) % span]
        return e + self.scale * (_ACTIVATIONS[self.activation](s) @ self.B.T)

    def new_ring(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, max(self.delays) + 1, self.A.shape[0], dtype=self.A.dtype, device=self.A.device)

    @classmethod
    def from_params(cls, p: OverlayParams) -> "TakensLoRA":
        m = cls(p.hidden_size, p.rank, p.delays, p.alpha, p.activation)
        with torch.no_grad():
            for name in ("A", "W", "B"):
                getattr(m, name).copy_(torch.from_numpy(getattr(p, name)))
        return m

    def to_params(self) -> OverlayParams:
        arrays = {n: getattr(self, n).detach().cpu().float().numpy().astype(np.float32) for n in ("A", "W", "B")}
        return OverlayParams(**arrays, delays=self.delays, alpha=self.alpha, activation=self.activation)
