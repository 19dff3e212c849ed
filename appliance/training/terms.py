"""The objective's terms per batch (objective.py holds the maths of each term, batching.py the batch).

    logp      = log_softmax(adapter.logits_at(batch))          (n, V)   float32, the overlay on
    fit_p     = -logp[p, target_p]                             (n_dom,) at the domain rows' positions
              | KL(teacher_p || logp_p)                        (n_dom,) with a teacher (training/heal.py)
    kl_p      = KL(logp_p || logp_base_p)                      (n,)     to the base, cached before the first step
    nll_i     = mean of fit_p over row i's positions           (B_dom,)
    div_i     = agg of kl_p over row i's positions             (B,)
    loss      = world / B * (sum_i nll_i + lambda * sum_i relu(div_i - tau))   this process's share

The barrier charges every row, or only the preservation rows when a teacher fits the domain rows.
Held-out NLL is the same fit without the teacher or the barrier, scored in batches without gradients.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from .adapter import TakensAdapter
from .batching import BaseCache, Batch, Example, Schedule, chunk_tokens, chunks
from .choices import TrainConfig
from .objective import aggregate_each, barrier, kl_of_logprobs, nll, per_position_kl, segment_mean


@dataclass
class Terms:
    nll: torch.Tensor  # (B_domain,) each domain conversation's fit: mean NLL of its targets, or mean KL(teacher || overlay)
    divergence: torch.Tensor  # (B,) aggregated KL of every row (domain rows first, then preservation)
    n_domain: int
    charged_from: int = 0  # the barrier charges rows charged_from.. (n_domain when a teacher fits the domain rows)

    @property
    def charged(self) -> torch.Tensor:
        return self.divergence[self.charged_from :]


@dataclass(frozen=True)
class Fit:
    """What the domain conversations are fitted to.

    Without a teacher, their target tokens (NLL), and the barrier charges every row. With `teacher`
    (one (n_i, V) tensor of log-probabilities per training example, at its predicting positions), the
    teacher's distributions: KL(teacher || overlay) per position (distillation, training/heal.py), and
    the barrier charges the preservation rows only, since on the domain rows the teacher decides.
    """

    teacher: Optional[Sequence[torch.Tensor]] = None

    def teacher_rows(self, domain: list[int]) -> Optional[torch.Tensor]:
        return torch.cat([self.teacher[i] for i in domain]) if self.teacher is not None else None


TARGETS = Fit()  # fit the domain conversations' target tokens: no teacher


def batch_terms(
    adapter: TakensAdapter,
    batch: Batch,
    logp_base: torch.Tensor,
    agg: str,
    n_domain: int,
    logp_teacher: Optional[torch.Tensor] = None,
) -> Terms:
    """Per-conversation fit (the first `n_domain` rows) and aggregated KL to the cached base (every row)."""
    logp = F.log_softmax(adapter.logits_at(batch), dim=-1)  # (n, V) float32
    domain = batch.rows < n_domain
    if logp_teacher is None:
        fit = -logp[domain].gather(1, batch.targets[domain, None])[:, 0]
    else:
        fit = kl_of_logprobs(logp_teacher.float(), logp[domain])
    kl = kl_of_logprobs(logp, logp_base)
    divergence = aggregate_each(kl, batch.rows, batch.size, agg)
    return Terms(segment_mean(fit, batch.rows[domain], n_domain), divergence, n_domain, 0 if logp_teacher is None else n_domain)


def step_terms(adapter, ex: Example, cfg: TrainConfig, on: bool = True):
    """NLL (adapter on, or the base if not `on`) and per-position KL to the base, at positions predicting assistant tokens."""
    batch = Batch.of([ex], next(adapter.module.parameters()).device)
    logits_base = adapter.logits_at(batch, on=False).detach()  # (n, V)
    if not on:
        return nll(logits_base, batch.targets), torch.zeros(len(logits_base))
    logits_on = adapter.logits_at(batch)  # (n, V)
    return nll(logits_on, batch.targets), per_position_kl(logits_on, logits_base)


def heldout_nll(adapter, examples: list[Example], cfg: TrainConfig, on: bool = True) -> Optional[float]:
    """Mean over the examples of each one's mean target NLL, scored in batches; None without examples."""
    return mean_nll(adapter, examples, on) if examples else None


def mean_nll(adapter, examples: list[Example], on: bool = True) -> float:
    """Mean over the (non-empty) examples of each one's mean target NLL, scored in batches."""
    device = next(adapter.module.parameters()).device
    losses = []
    with torch.no_grad():
        for group in chunks(examples, chunk_tokens(device)):
            batch = Batch.of(group, device)
            per_position = F.cross_entropy(adapter.logits_at(batch, on), batch.targets, reduction="none")
            losses.append(segment_mean(per_position, batch.rows, batch.size))
    return float(torch.cat(losses).mean())


def step_loss(adapter, cfg: TrainConfig, sched: Schedule, step: int, trainset, preserve, cache: BaseCache, fit: Fit = TARGETS):
    """(this process's loss, its terms) for one step."""
    dom, pres = sched.domain(step), sched.preserve(step)
    examples = [trainset[i] for i in dom] + [preserve[j] for j in pres]
    device = next(adapter.module.parameters()).device
    terms = batch_terms(adapter, Batch.of(examples, device), cache.take(dom, pres), cfg.agg, len(dom), fit.teacher_rows(dom))
    # Each process weighs its share by world / B: DDP's average of the gradients is then the
    # gradient of the global batch's mean of (fit + lambda * barrier) per conversation.
    weight = sched.ranks.world / cfg.batch
    loss = weight * (terms.nll.sum() + cfg.lam * barrier(terms.charged, cfg.tau).sum())
    return loss, terms
