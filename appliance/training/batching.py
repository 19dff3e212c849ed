"""Batching for the trainer: conversations side by side, the fixed order the steps read them in, and the
frozen base's log-probabilities computed once (docs/overlay-training.md).

  Example    one tokenised conversation and which of its tokens are targets
  Batch      examples right-padded side by side, with the predicting positions
  Schedule   which examples each step reads, whatever the batch or the processes
  BaseCache  the base's log-probabilities at every position the steps will read, computed once
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .distributed import Ranks


@dataclass
class Example:
    ids: torch.Tensor  # (T,) token ids
    target: torch.Tensor  # (T,) bool: this token belongs to an assistant turn


@dataclass
class Batch:
    """Conversations side by side, right-padded, each in its own row from position 0.

    Causal attention never lets a real position see the padding after it, and the overlay's delay
    ring of a row reads only that row: no conversation reaches into another, and a batched
    conversation computes what it computes alone (tests/training/test_batching.py).
    """

    ids: torch.Tensor  # (B, T) token ids, padded with token 0
    rows: torch.Tensor  # (n,) the row of each predicting position (row-major order)
    cols: torch.Tensor  # (n,) its column: position t predicts token t + 1
    targets: torch.Tensor  # (n,) the token it predicts

    @property
    def size(self) -> int:
        return self.ids.shape[0]

    @classmethod
    def of(cls, examples: list[Example], device, pad_to: int = 8) -> "Batch":
        """Rows padded to a multiple of `pad_to` tokens: fewer distinct shapes for the GPU's kernels."""
        T = -(-max(len(ex.ids) for ex in examples) // pad_to) * pad_to
        ids = torch.zeros(len(examples), T, dtype=torch.long)
        predicts = torch.zeros(len(examples), T, dtype=torch.bool)
        for i, ex in enumerate(examples):
            ids[i, : len(ex.ids)] = ex.ids
            predicts[i, : len(ex.ids) - 1] = ex.target[1:]
        rows, cols = predicts.nonzero(as_tuple=True)
        ids, rows, cols = ids.to(device), rows.to(device), cols.to(device)
        return cls(ids, rows, cols, ids[rows, cols + 1])

    @classmethod
    def every_position(cls, ids: torch.Tensor) -> "Batch":
        """One sequence, logits at every position (the last one included)."""
        cols = torch.arange(len(ids), device=ids.device)
        return cls(ids[None], torch.zeros_like(cols), cols, ids)


def chunks(examples: list, tokens: int) -> list[list]:
    """Consecutive groups of examples with about `tokens` tokens each (padding counted)."""
    groups: list[list] = [[]]
    for ex in examples:
        if groups[-1] and (len(groups[-1]) + 1) * max(len(ex.ids), *(len(e.ids) for e in groups[-1])) > tokens:
            groups.append([])
        groups[-1].append(ex)
    return [g for g in groups if g]


def chunk_tokens(device: torch.device) -> int:
    """Tokens per pass when scoring without gradients: large on a GPU, small on the CPU (memory of (n, V) logits)."""
    return 16384 if device.type == "cuda" else 1024


def base_logprobs(adapter, examples: list[Example], dtype: torch.dtype, on: bool = False) -> list[torch.Tensor]:
    """The frozen base's log-probabilities (n_i, V) at each example's predicting positions, computed once.

    The base never changes, so the barrier's reference is a constant of the data: training reads it
    from here every epoch instead of running the base again (docs/overlay-training.md says in which
    dtype and what that costs the KL). With `on`, the same of the adapter with its overlay on (a
    teacher's distributions: training/heal.py).
    """
    device = next(adapter.module.parameters()).device
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for group in chunks(examples, chunk_tokens(device)):
            batch = Batch.of(group, device)
            logp = F.log_softmax(adapter.logits_at(batch, on=on), dim=-1).to(dtype)
            out += list(torch.split(logp, torch.bincount(batch.rows, minlength=batch.size).tolist()))
    return out


def cache_dtype(precision: str) -> torch.dtype:
    """float16 beside a bf16 base: log-probabilities lie in [-100, 0], where float16 keeps 3 more bits than bfloat16."""
    return torch.float16 if precision == "bf16" else torch.float32


@dataclass(frozen=True)
class Schedule:
    """Which conversations and preservation replies each step reads: a fixed order, whatever the batch or the processes.

    Step s reads training examples s*B .. s*B + B - 1 (cyclically) and as many preservation
    replies; each process takes its round-robin share (distributed.Ranks.share).
    """

    n_train: int
    n_preserve: int
    batch: int
    ranks: Ranks

    def domain(self, step: int) -> list[int]:
        return self.ranks.share([(step * self.batch + k) % self.n_train for k in range(self.batch)])

    def preserve(self, step: int) -> list[int]:
        if not self.n_preserve:
            return []
        return self.ranks.share([(step * self.batch + k) % self.n_preserve for k in range(self.batch)])


class BaseCache:
    """The base's log-probabilities of every conversation and preservation reply the steps will read, computed once."""

    def __init__(self, adapter, sched: Schedule, steps: range, trainset, preserve, dtype: torch.dtype):
        used_train = sorted({i for s in steps for i in sched.domain(s)})
        used_preserve = sorted({j for s in steps for j in sched.preserve(s)})
        self.train = dict(zip(used_train, base_logprobs(adapter, [trainset[i] for i in used_train], dtype)))
        self.preserve = dict(zip(used_preserve, base_logprobs(adapter, [preserve[j] for j in used_preserve], dtype)))

    def take(self, domain: list[int], preserve: list[int]) -> torch.Tensor:
        """(n, V): the rows of a batch of these conversations then these replies, in `Batch` order."""
        return torch.cat([self.train[i] for i in domain] + [self.preserve[j] for j in preserve])
