"""The behaviour score: how far a steer (or a healed overlay) moves the model toward what its positive
system prompt asks for, on held-out prompts of the concept, measured rather than eyeballed (docs/steering.md).

For each held-out pair (a user turn; a positive and a negative system prompt):
  y+      the base's greedy reply under the positive system prompt
  y-      the base's greedy reply under the negative one
  plain   the user turn alone, rendered as the chat renders it (no system prompt of ours)
  margin  mean per-token log p(y+ | plain) minus mean per-token log p(y- | plain), teacher-forced

    score(M) = (margin_M(plain) - margin_base(plain)) / (margin_base(told) - margin_base(plain))

with `told` the plain turn under the positive system prompt, margins averaged over the pairs: 0 is the
base, 1 is the base told by its system prompt. A model that prefers the positive reply more than the
told base does scores above 1; one that moves the other way, below 0.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import UsageError

if TYPE_CHECKING:
    from ..runtime.session import Runtime
    from .dataset import Pairs

LogitsFn = Callable[[list[int]], torch.Tensor]  # token ids (T,) -> logits (T, V)


@dataclass(frozen=True)
class Probe:
    plain: list[int]  # the user turn alone, rendered up to where the reply starts
    told: list[int]  # the same turn under the positive system prompt
    positive: list[int]  # y+: the base's greedy reply under the positive system prompt
    negative: list[int]  # y-: the base's greedy reply under the negative one


@dataclass(frozen=True)
class Scale:
    """The base's margins: where 0 and 1 lie."""

    plain: float
    told: float


def reply_logprob(logits_fn: LogitsFn, context: list[int], reply: list[int]) -> float:
    """Mean per-token log p(reply | context), teacher-forced."""
    with torch.no_grad():
        logits = logits_fn(context + reply)[len(context) - 1 : -1].float()
    logp = F.log_softmax(logits, dim=-1)
    return float(logp.gather(1, torch.tensor(reply, device=logp.device)[:, None]).mean())


def margin(logits_fn: LogitsFn, probes: list[Probe], told: bool = False) -> float:
    """Mean over the probes of log p(y+) - log p(y-) per token, in the plain (or told) context."""
    out = []
    for p in probes:
        context = p.told if told else p.plain
        out.append(reply_logprob(logits_fn, context, p.positive) - reply_logprob(logits_fn, context, p.negative))
    return float(np.mean(out))


def scale(base_fn: LogitsFn, probes: list[Probe]) -> Scale:
    s = Scale(margin(base_fn, probes), margin(base_fn, probes, told=True))
    if not s.told - s.plain > 1e-6:
        raise UsageError("the positive system prompt does not move the base toward its own replies: no scale to score on")
    return s


def score(logits_fn: LogitsFn, probes: list[Probe], s: Scale) -> float:
    """0 = the base, 1 = the base told by its positive system prompt."""
    return (margin(logits_fn, probes) - s.plain) / (s.told - s.plain)


def make_probes(runtime: "Runtime", pairs: "Pairs", max_tokens: int = 48) -> list[Probe]:
    """The probes of a pairs file, the replies made by llama.cpp greedily (the runtime users get).

    Each side's system prompt is its first message; the user turn is the pair's last message.
    """
    from ..runtime.sampler import GREEDY
    from ..runtime.session import Session

    def reply(side: list[dict], user: str) -> tuple[list[int], list[int]]:
        system = side[0]["content"] if side[0]["role"] == "system" else None
        r = Session(runtime, system_prompt=system, settings=GREEDY).generate(user, max_tokens=max_tokens)
        return r.prompt, r.tokens

    probes = []
    for pair in pairs.pairs:
        user = pair.positive[-1]["content"]

        told, positive = reply(pair.positive, user)
        _, negative = reply(pair.negative, user)
        plain = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": user}]))
        if positive and negative:
            probes.append(Probe(plain, told, positive, negative))
    if not probes:
        raise UsageError("the held-out pairs gave no replies to score")
    return probes
