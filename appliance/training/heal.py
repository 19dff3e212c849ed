"""Healing a steer into a Takens-LoRA (docs/steering.md).

  teacher  the base with the control vector on (steer.Steering); after a first round, the base with the
           overlay healed so far (`init`) and a vector re-steered on top of it
  student  the base with a Takens-LoRA, starting from `init` (or the identity)
  loss     per concept prompt, the mean over the positions of its teacher's own greedy continuation of
           KL(teacher || student), plus lambda * relu(agg_t KL(student || base)_t - tau) along the base's
           own replies to neutral prompts (agg: mean, rmse, p95 or max)

The batching, the cached base, the optimiser and the barrier are the trainer's (`trainer.optimise` with a
teacher `Fit`, terms.py); the result is an ordinary `takens-lora/1` overlay.
"""

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from .. import __version__
from ..errors import UsageError
from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..overlay.params import OverlayParams
from ..overlay.takens_torch import TakensLoRA
from .adapter import TakensAdapter, resolve_precision
from .batching import Batch, Example, base_logprobs, cache_dtype
from .choices import TrainConfig
from .objective import kl_of_logprobs
from .steer import Steering
from .terms import Fit
from .trainer import StepLog, optimise

DEFAULT_MAX_TOKENS = 48  # length of the teacher's continuations
Pick = Callable[[torch.Tensor, list[int], int], int]  # (logits (V,), the sequence so far, its prompt index) -> next token


@dataclass
class HealResult:
    overlay: Overlay
    log: list[StepLog]
    concept: list[Example]  # the concept prompts and the teacher's continuations (the targets)
    kl_before: float  # mean KL(teacher || student) over the continuations, at the start
    kl_after: float  # the same at the end


def adapter_for(base, params: Optional[OverlayParams], cfg: TrainConfig, device) -> TakensAdapter:
    """The base with the overlay `params` (a new identity overlay of the recipe's shape if None)."""
    if params is not None:
        module = TakensLoRA.from_params(params)
    else:
        module = TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation)
    return TakensAdapter(base, module.to(device), resolve_precision(cfg))


def generate(
    adapter: TakensAdapter,
    prompts: Sequence[list[int]],
    max_tokens: int,
    is_end: Callable[[int], bool],
    on: bool = True,
    steering: Optional[Steering] = None,
    pick: Optional[Pick] = None,
    keep_end: bool = False,
) -> list[list[int]]:
    """Each prompt's reply from the adapter (overlay on or off, steered or not), all prompts side by side.

    Recomputes each whole sequence at every step (the overlay's delay ring needs no cache this way):
    slow on the CPU, exact. Rows are right-padded: causal attention keeps them apart (batching.Batch).
    Greedy unless `pick` chooses; `keep_end` keeps the end-of-generation token in the reply.
    """
    device = next(adapter.module.parameters()).device
    seqs = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(seqs)))
    with torch.no_grad(), steering.active() if steering is not None else nullcontext():
        for _ in range(max_tokens):
            if not alive:
                break
            T = max(len(seqs[i]) for i in alive)
            ids = torch.zeros(len(alive), T, dtype=torch.long)
            for k, i in enumerate(alive):
                ids[k, : len(seqs[i])] = torch.tensor(seqs[i])
            cols = torch.tensor([len(seqs[i]) - 1 for i in alive])
            batch = Batch(ids.to(device), torch.arange(len(alive), device=device), cols.to(device), cols.to(device))
            logits = adapter.logits_at(batch, on=on)  # (len(alive), V)
            still = []
            for k, i in enumerate(alive):
                token = int(logits[k].argmax()) if pick is None else pick(logits[k], seqs[i], i)
                if is_end(token):
                    if keep_end:
                        out[i].append(token)
                    continue
                seqs[i].append(token)
                out[i].append(token)
                still.append(i)
            alive = still
    return out


def teacher_kl(student: TakensAdapter, examples: list[Example], teacher: Sequence[torch.Tensor]) -> float:
    """Mean over the examples of the mean per-position KL(teacher || student)."""
    device = next(student.module.parameters()).device
    kls = []
    with torch.no_grad():
        for ex, logp_teacher in zip(examples, teacher):
            logp = F.log_softmax(student.logits_at(Batch.of([ex], device)), dim=-1)
            kls.append(float(kl_of_logprobs(logp_teacher.float(), logp).mean()))
    return sum(kls) / len(kls)


def heal(
    base,
    vector: ControlVector,
    prompts: Sequence[list[int]],
    preserve: Sequence[Example],
    cfg: TrainConfig,
    is_end: Callable[[int], bool],
    init: Optional[OverlayParams] = None,
    init_sha256: Optional[str] = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_step: Optional[Callable[[StepLog], None]] = None,
) -> HealResult:
    """A Takens-LoRA that reproduces the steered model (`init` + `vector`) on the concept prompts, held
    near the base on the neutral replies `preserve`; `prompts` are the rendered concept prompts; `init_sha256`
    (the digest of `init`'s overlay.safetensors) goes into the record."""
    if not prompts:
        raise UsageError("no concept prompts to heal on")
    if not preserve:
        raise UsageError("healing needs neutral replies for its barrier: without them nothing holds the overlay near the base")
    device = next(base.parameters()).device
    torch.manual_seed(cfg.seed)
    teacher = adapter_for(base, init, cfg, device)
    steering = Steering(base, vector.directions, vector.strength)
    on = init is not None
    replies = generate(teacher, prompts, max_tokens, is_end, on=on, steering=steering, keep_end=True)
    concept = [
        Example(torch.tensor(p + r), torch.tensor([False] * len(p) + [True] * len(r))) for p, r in zip(prompts, replies) if r
    ]
    if not concept:
        raise UsageError("the steered model ended every concept prompt at once: nothing to heal on")
    dtype = cache_dtype(teacher.precision)
    with steering.active():
        target = base_logprobs(teacher, concept, dtype, on=on)
    student = adapter_for(base, init, cfg, device)
    before = teacher_kl(student, concept, target)
    log, speed = optimise(student, concept, cfg, None, on_step, preserve=preserve, fit=Fit(target))
    after = teacher_kl(student, concept, target)
    training = {
        "recipe": "heal: KL(steered teacher || overlay) along the teacher's greedy continuations of the concept prompts"
        " + lambda * relu(agg(kl to the base on neutral replies) - tau)",
        "control": {"strength": vector.strength, "layers": vector.layers, "provenance": vector.provenance},
        "from_overlay": init is not None,
        "from_overlay_sha256": init_sha256,
        "concept_prompts": len(concept),
        "preservation_replies": len(preserve),
        "max_tokens": max_tokens,
        "config": {**asdict(cfg), "delays": list(cfg.delays)},
        "steps": len(log),
        "teacher_kl_before": before,
        "teacher_kl_after": after,
        "final_barrier": log[-1].barrier if log else None,
        "tokens_per_second": speed,
        "code_version": __version__,
    }
    return HealResult(Overlay(student.module.to_params(), vector.base_model_sha256, training), log, concept, before, after)
