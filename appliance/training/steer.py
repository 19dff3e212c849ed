"""Steering vectors: contrastive mean differences per block, and a strength set by a KL budget.

  Steering       adds strength * direction.L to the output of block L at every position (torch forward hooks)
  mean_differences  direction.L = mean over pairs of (h_L(positive) - h_L(negative)), h_L the output of
                 block L at the position where the reply starts (the last prompt token)
  calibrate      bisects the strength until the p95 per-token KL(steered || base) equals the budget
  steer          all of it, from the verified base and the pairs (`dataset.load_pairs`) to a `ControlVector`

Block indices are 0-based and a vector read at block L is written as `direction.L` and added at block L:
llama.cpp's `llama_set_adapter_cvec` adds `direction.L` to the output of block L too (block 0 is never
steered), so torch and llama.cpp steer the same thing (tests/training/test_steer.py compares their logits).
llama.cpp's `cvector-generator` instead stores block i's vector as `direction.{i+1}`, one block late.

The KL is measured along the base's own greedy replies to the neutral prompts, made once by llama.cpp:
the same positions at every strength, so the statistic is a function of the strength alone and the
bisection converges; what the steered model says of its own accord is the report's business.
"""

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ..errors import UsageError
from ..overlay.control import MAX_STRENGTH, ControlVector
from .dataset import Pairs
from .objective import per_position_kl

if TYPE_CHECKING:
    from ..overlay.params import OverlayParams
    from ..runtime.session import Runtime
    from ..trust.builtin import VerifiedModel

DEFAULT_BUDGET = 1.0  # nats, p95 of the per-token KL on neutral prompts
STATISTIC = "p95"


# -- steering in torch -------------------------------------------------------------


def blocks(base) -> torch.nn.ModuleList:
    """The decoder blocks, block 0 first (transformers' causal LMs keep them at model.layers)."""
    return base.model.layers


class Steering:
    """Adds strength * directions[L] (d,) to the output of block L, at every position, while active."""

    def __init__(self, base, directions: dict[int, np.ndarray], strength: float):
        device = next(base.parameters()).device
        self.base = base
        self.add = {n: torch.as_tensor(d, device=device) * strength for n, d in directions.items()}

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = [blocks(self.base)[n].register_forward_hook(self._hook(v)) for n, v in self.add.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _hook(v: torch.Tensor):
        def hook(module, inputs, output):
            if isinstance(output, tuple):  # some versions return (hidden, ...) from a block
                return (output[0] + v, *output[1:])
            return output + v

        return hook


def logits(base, ids: list[int], steering: Steering | None = None) -> torch.Tensor:
    """(T, V) logits of one sequence, steered or not."""
    x = torch.tensor(ids, device=next(base.parameters()).device)[None]
    with torch.no_grad():
        if steering is None:
            return base(x).logits[0]
        with steering.active():
            return base(x).logits[0]


def block_outputs(
    base, ids: list[int], layers: list[int], forward: Optional[Callable[[list[int]], object]] = None
) -> dict[int, np.ndarray]:
    """The output (d,) of each block in `layers` at the last position of `ids`.

    `forward` runs the model on `ids` instead of the bare base (e.g. the base with an overlay on: a
    vector re-steered on a healed model is read there, docs/steering.md).
    """
    seen: dict[int, torch.Tensor] = {}

    def keep(n: int):
        def hook(module, inputs, output):
            seen[n] = (output[0] if isinstance(output, tuple) else output)[0, -1].detach()

        return hook

    handles = [blocks(base)[n].register_forward_hook(keep(n)) for n in layers]
    try:
        with torch.no_grad():
            if forward is not None:
                forward(ids)
            else:
                base(torch.tensor(ids, device=next(base.parameters()).device)[None])
    finally:
        for h in handles:
            h.remove()
    return {n: seen[n].float().cpu().numpy() for n in layers}


def mean_differences(
    base, pairs: list[tuple[list[int], list[int]]], layers: list[int], forward: Optional[Callable[[list[int]], object]] = None
) -> dict[int, np.ndarray]:
    """direction.L = mean over pairs of block L's output, positive minus negative, where the reply starts."""
    sums = {n: np.zeros(base.config.hidden_size, dtype=np.float64) for n in layers}
    for pos, neg in pairs:
        hp, hn = block_outputs(base, pos, layers, forward), block_outputs(base, neg, layers, forward)
        for n in layers:
            sums[n] += hp[n].astype(np.float64) - hn[n].astype(np.float64)
    return {n: (s / len(pairs)).astype(np.float32) for n, s in sums.items()}


# -- the strength, by a KL budget ----------------------------------------------------


class KLMeter:
    """Per-token KL(steered || base) at the reply positions of fixed sequences; the base pass is made once."""

    def __init__(
        self, base, sequences: list[tuple[list[int], list[int]]], forward: Optional[Callable[[list[int]], torch.Tensor]] = None
    ):
        """`forward` gives the (T, V) logits of the model being steered (default the base; e.g. the base with
        an overlay on): the KL is measured against that model, steered or not."""
        self.base = base
        self.forward = forward if forward is not None else lambda ids: logits(base, ids)
        self.sequences = [(p + r, len(p)) for p, r in sequences if r]
        if not self.sequences:
            raise UsageError("the neutral prompts gave no reply tokens to measure the KL on")
        self._base_logits = [self._logits(ids, None)[start - 1 : -1] for ids, start in self.sequences]

    def _logits(self, ids: list[int], steering: Optional[Steering]) -> torch.Tensor:
        with torch.no_grad(), steering.active() if steering is not None else nullcontext():
            return self.forward(ids)

    def per_token(self, directions: dict[int, np.ndarray], strength: float) -> np.ndarray:
        steering = Steering(self.base, directions, strength)
        kls = [
            per_position_kl(self._logits(ids, steering)[start - 1 : -1], b).cpu().numpy()
            for (ids, start), b in zip(self.sequences, self._base_logits)
        ]
        return np.concatenate(kls)

    def p95(self, directions: dict[int, np.ndarray], strength: float) -> float:
        return float(np.quantile(self.per_token(directions, strength), 0.95))


def calibrate(
    stat: Callable[[float], float], budget: float, rtol: float = 0.02, max_steps: int = 30
) -> tuple[float, list[tuple[float, float]]]:
    """The strength c >= 0 where stat(c) = budget, by doubling then bisection; with the (c, stat) steps taken.

    stat(0) is 0 and it grows with c; the search stops within rtol of the budget, or after max_steps
    with the strength whose statistic came nearest.
    """
    log: list[tuple[float, float]] = []

    def at(c: float) -> float:
        log.append((c, stat(c)))
        return log[-1][1]

    lo, hi = 0.0, 1.0
    while at(hi) < budget:
        lo, hi = hi, hi * 2
        if hi > MAX_STRENGTH:
            raise UsageError(f"the KL budget {budget:g} is not reached below strength {MAX_STRENGTH:g}")
    while abs(log[-1][1] - budget) > rtol * budget and len(log) < max_steps:
        mid = (lo + hi) / 2
        if at(mid) < budget:
            lo = mid
        else:
            hi = mid
    best = min(log, key=lambda step: abs(step[1] - budget))
    return best[0], log


# -- the whole recipe -------------------------------------------------------------------


def _rendered(runtime: "Runtime", messages: list[dict]) -> list[int]:
    return runtime.engine.tokenize(runtime.template.render(messages))


def steer(
    model: "VerifiedModel",
    pairs: Pairs,
    neutral_prompts: list[str],
    layers: list[int],
    budget: float = DEFAULT_BUDGET,
    max_tokens: int = 48,
    device: str = "cpu",
    base=None,
    overlay: Optional["OverlayParams"] = None,
    overlay_sha256: Optional[dict[str, str]] = None,
) -> ControlVector:
    """A control vector for `model` from contrastive pairs, its strength set so that p95 KL on neutral prompts = budget.

    With `overlay` (a later round, docs/steering.md) the vector steers the base with that overlay on: the
    mean differences are read there and the KL is measured against it; `overlay_sha256` (its files'
    digests) goes into the provenance.
    """
    from ..runtime.session import Runtime  # llama.cpp: the tokenizer and the base's own replies
    from .adapter import load_base
    from .evaluate import replies

    runtime = Runtime(model, n_ctx=2048)
    try:
        n_layer = runtime.engine.n_layer
        if not layers or min(layers) < 1 or max(layers) > n_layer - 1:
            raise UsageError(f"layers must be blocks in 1..{n_layer - 1}")
        tokenized = [(_rendered(runtime, p.positive), _rendered(runtime, p.negative)) for p in pairs.pairs]
        neutral = [(t.prompt, t.reply) for t in replies(runtime, neutral_prompts, None, max_tokens)]
    finally:
        runtime.close()
    base = base if base is not None else load_base(model, device)
    forward = _with_overlay(base, overlay, device) if overlay is not None else None
    directions = mean_differences(base, tokenized, layers, forward)
    meter = KLMeter(base, neutral, forward)
    strength, log = calibrate(lambda c: meter.p95(directions, c), budget)
    provenance = {
        "method": "mean-difference",
        "read_at": "each block's output at the last prompt token, where the reply starts",
        "pairs_sha256": pairs.sha256,
        "pairs": len(pairs.pairs),
        "layers": layers,
        "calibration": {
            "statistic": STATISTIC,
            "budget": budget,
            "along": "the base's greedy replies to the neutral prompts",
            "against": "the base with the overlay on" if overlay is not None else "the base",
            "neutral_sha256": hashlib.sha256("\n".join(neutral_prompts).encode()).hexdigest(),
            "neutral_prompts": len(neutral_prompts),
            "max_tokens": max_tokens,
            "achieved": dict(log)[strength],
            "steps": [[c, s] for c, s in log],
        },
    }
    if overlay is not None:
        provenance["read_on_overlay"] = overlay_sha256 or {}
    return ControlVector(directions, strength, model.sha256, provenance)


def _with_overlay(base, params: "OverlayParams", device: str) -> Callable[[list[int]], torch.Tensor]:
    """(T,) token ids -> (T, V) logits of the base with the overlay on."""
    from ..overlay.takens_torch import TakensLoRA
    from .adapter import TakensAdapter

    adapter = TakensAdapter(base, TakensLoRA.from_params(params).to(device))
    return lambda ids: adapter.logits(torch.tensor(ids, device=device))
