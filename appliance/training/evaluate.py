"""What an overlay does to the model, and what it costs in coherence (seeds 000, 001, 003).

  kl_stats          per-position KL(p_overlay || p_base) along the overlay's own replies: mean, rmse, p95, max
  loop_rate         share of reply tokens that close a 4-gram already seen in the same reply
  compare_loops     loop rate off vs on, and per prompt how many replies loop more, less, the same
  participation_ratio  (sum lambda)^2 / sum lambda^2 of the covariance of final hidden states
  nll_llama         held-out NLL measured in llama.cpp, quantised weights, overlay through batch.embd

Replies come from the runtime users get (llama.cpp, greedy); divergence and
hidden states from the torch base on the same tokens.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..overlay.files import Overlay
from ..overlay.takens_numpy import OverlayStream
from ..overlay.takens_torch import TakensLoRA
from .batching import Example
from .objective import AGGREGATES, aggregate, nll, per_position_kl

if TYPE_CHECKING:
    from ..runtime.sampler import SamplingSettings
    from ..runtime.session import Runtime

LOOP_N = 4


@dataclass
class Trajectory:
    prompt: list[int]  # rendered chat prompt tokens
    reply: list[int]  # reply tokens
    text: str = ""  # the reply as text


def replies(
    runtime: "Runtime",
    prompts: list[str],
    overlay: Optional[Overlay],
    max_tokens: int,
    settings: Optional["SamplingSettings"] = None,
) -> list[Trajectory]:
    """Replies made by llama.cpp (greedy unless `settings` say otherwise)."""
    from ..runtime.sampler import GREEDY  # llama.cpp: only where replies are generated
    from ..runtime.session import Session

    settings = settings or GREEDY

    out = []
    for text in prompts:
        s = Session.switched_on(runtime, overlay, settings=settings)
        reply = s.generate(text, max_tokens=max_tokens)
        out.append(Trajectory(reply.prompt, reply.tokens, reply.text))
    return out


def loop_rate(tokens: list[int], n: int = LOOP_N) -> float:
    """Share of tokens that complete an n-gram seen earlier in the same sequence (0 = no loops)."""
    if len(tokens) <= n:
        return 0.0
    seen, repeats = set(), 0
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        repeats += gram in seen
        seen.add(gram)
    return repeats / (len(tokens) - n + 1)


def compare_loops(off: list[Trajectory], on: list[Trajectory]) -> dict:
    """Mean loop rate off and on, and paired per prompt: how many replies loop more, less or the same with it on.

    The mean moves with one or two replies that fall into a long loop; the paired counts show
    whether the overlay makes looping more likely or only moved where it happens.
    """
    a, b = np.array([loop_rate(t.reply) for t in off]), np.array([loop_rate(t.reply) for t in on])
    return {
        "off": float(a.mean()),
        "on": float(b.mean()),
        "more": int((b > a).sum()),
        "less": int((b < a).sum()),
        "same": int((b == a).sum()),
    }


def participation_ratio(hidden: np.ndarray) -> float:
    """hidden (n, d) -> PR of its covariance: how many dimensions the states actually use."""
    eig = np.clip(np.linalg.eigvalsh(np.cov(hidden, rowvar=False)), 0.0, None)
    return float(eig.sum() ** 2 / (eig**2).sum())


def _forward(base, module: Optional[TakensLoRA], ids: list[int]):
    E = base.get_input_embeddings()(torch.tensor(ids)[None])  # (1, T, d)
    out = base(inputs_embeds=module(E) if module is not None else E, output_hidden_states=True)
    return out.logits[0], out.hidden_states[-1][0]  # (T, V), (T, d)


def trajectory_measures(base, overlay: Overlay, trajs: list[Trajectory], on: bool):
    """Final hidden states of the reply positions in the state the replies were made in; when `on`,
    also the per-position KL(overlay || base) along each reply (the base pass runs only then)."""
    module = TakensLoRA.from_params(overlay.params) if on else None
    kls, hidden = [], []
    with torch.no_grad():
        for t in trajs:
            if not t.reply:
                continue
            ids, start = t.prompt + t.reply, len(t.prompt)
            logits, h = _forward(base, module, ids)
            if on:
                logits_base, _ = _forward(base, None, ids)
                # position p predicts token p+1: the reply tokens are predicted from start-1 .. T-2
                kls.append(per_position_kl(logits[start - 1 : -1], logits_base[start - 1 : -1]).numpy())
            hidden.append(h[start:].numpy())
    return kls, np.concatenate(hidden) if hidden else np.zeros((0, 1))


def torch_greedy(adapter, prompt: list[int], max_tokens: int, is_end) -> list[int]:
    """Greedy reply of any adapter (adapter on), recomputing the whole context each step: slow, exact."""
    ids, device = list(prompt), next(adapter.module.parameters()).device
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(adapter.logits(torch.tensor(ids, device=device))[-1].argmax())
            if is_end(token):
                break
            ids.append(token)
    return ids[len(prompt) :]


def kl_along(adapter, prompt: list[int], reply: list[int]) -> np.ndarray:
    """KL(adapter || base) at each position that predicts a reply token."""
    ids, start = torch.tensor(prompt + reply, device=next(adapter.module.parameters()).device), len(prompt)
    with torch.no_grad():
        return per_position_kl(adapter.logits(ids)[start - 1 : -1], adapter.reference(ids)[start - 1 : -1]).cpu().numpy()


def kl_stats(kls: list[np.ndarray]) -> dict[str, float]:
    pooled = torch.from_numpy(np.concatenate(kls)) if kls else torch.zeros(1)
    return {agg: float(aggregate(pooled, agg)) for agg in AGGREGATES}


def nll_llama(runtime: "Runtime", overlay: Optional[Overlay], examples: list[Example]) -> float:
    """Mean NLL of the target tokens, scored by llama.cpp on its quantised weights."""
    engine, losses = runtime.engine, []
    for ex in examples:
        ids = ex.ids.tolist()
        engine.forget_from(0)
        if overlay is None:
            engine.decode_tokens(ids, 0, all_logits=True)
        else:
            engine.decode_embeddings(OverlayStream(overlay.params).steps(runtime.embeddings.rows(ids)), 0, all_logits=True)
        logits = torch.from_numpy(np.stack([engine.logits_at(i).copy() for i in range(len(ids) - 1)]))
        predicts = ex.target[1:]
        losses.append(nll(logits[predicts], ex.ids[1:][predicts]).item())
    runtime.decoder.reset()  # we scored behind the decoder's back
    return float(np.mean(losses))
