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
    return kl_of_logprobs(F.log_softmax(logits_overlay.float(), dim=-1), F.log_softmax(logits_base.float(), dim=-1))


def kl_of_logprobs(logp_overlay: torch.Tensor, logp_base: torch.Tensor) -> torch.Tensor:
    """(n, V) log-probabilities, (n, V) the base's (any float dtype, e.g. a float16 cache) -> (n,) KL in nats."""
    return (logp_overlay.exp() * (logp_overlay - logp_base.float())).sum(-1)


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


def aggregate_each(kl: torch.Tensor, owner: torch.Tensor, n: int, agg: str) -> torch.Tensor:
    """(m,) KL of the positions of n sequences, (m,) which sequence each belongs to -> (n,): `aggregate` per sequence."""
    if agg == "p95":
        return torch.stack([aggregate(kl[owner == i], agg) for i in range(n)])
    if agg == "max":
        return torch.full((n,), float("-inf"), device=kl.device).scatter_reduce(0, owner, kl, "amax")
    if agg not in ("mean", "rmse"):
        raise ValueError(f"unknown aggregate {agg!r}; use one of {AGGREGATES}")
    mean = segment_mean(kl if agg == "mean" else kl.pow(2), owner, n)
    return mean if agg == "mean" else mean.clamp_min(1e-12).sqrt()


def segment_mean(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """(m,), (m,) sequence of each value -> (n,) the mean of each sequence's values."""
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, values)
    return sums / torch.bincount(owner, minlength=n).clamp_min(1)


def barrier(divergence: torch.Tensor, tau: float) -> torch.Tensor:
    """Zero while the aggregated divergence stays under tau; grows linearly above it."""
    return F.relu(divergence - tau)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, V), (n,) -> mean negative log-likelihood of the targets."""
    return F.cross_entropy(logits.float(), targets)
