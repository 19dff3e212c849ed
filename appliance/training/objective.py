"""The training objective: NLL with the overlay on, plus a barrier on its divergence from the base.

    loss = NLL(assistant tokens | overlay on) + lambda * relu(agg_t KL(p_overlay,t || p_base,t) - tau)

KL is over the full vocabulary at each target position t; `agg` folds the
positions of a sequence into one number. `mean` lets a few incoherent spikes
hide among many calm positions; `rmse`, `p95` and `max` let them fire the
barrier (docs/overlay-training.md).
"""

import torch
from torch.nn import functional as F

from .choices import AGGREGATES


def per_position_kl(logits_overlay: torch.Tensor, logits_base: torch.Tensor) -> torch.Tensor:
    """(n, V), (n, V) -> (n,): KL(p_overlay || p_base) at each position, in nats."""
    logp_o = F.log_softmax(logits_overlay.float(), dim=-1)
    logp_b = F.log_softmax(logits_base.float(), dim=-1)
    return (logp_o.exp() * (logp_o - logp_b)).sum(-1)


def aggregate(kl: torch.Tensor, agg: str) -> torch.Tensor:
    """(n,) -> scalar"""
    if agg == "mean":
        return kl.mean()
    if agg == "rmse":
        return kl.pow(2).mean().clamp_min(1e-12).sqrt()  # sqrt has no gradient at 0 (the identity overlay)
    if agg == "p95":
        return torch.quantile(kl.float(), 0.95)
    if agg == "max":
        return kl.max()
    raise ValueError(f"unknown aggregate {agg!r}; use one of {AGGREGATES}")


def barrier(divergence: torch.Tensor, tau: float) -> torch.Tensor:
    """Zero while the aggregated divergence stays under tau; grows linearly above it."""
    return F.relu(divergence - tau)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, V), (n,) -> mean negative log-likelihood of the targets."""
    return F.cross_entropy(logits.float(), targets)
