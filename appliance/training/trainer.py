"""The trainer: the optimisation loop and its entry points, a Takens-LoRA overlay on a frozen base.

    for step in steps:                                      one batch of B conversations per step
        loss, terms = step_loss(adapter, ..., cache)        terms.py: fit + lambda * barrier, this process's share
        loss.backward(); AdamW.step()                       only the overlay's parameters train
        log StepLog(mean nll, barrier per conversation, mean KL)   averaged over the processes
        every checkpoint_every steps and the last: checkpoint.pt   config, step, adapter, optimiser, RNG, log

The base's log-probabilities at the target positions are computed once, before the first step
(`BaseCache`, batching.py); every step runs the base once, with the overlay, and reads the reference
from that cache. On a GPU the base runs under bf16 autocast (adapter.py); under torchrun the batch is
split over processes (distributed.py). Deterministic on the CPU for a given seed. `train` encodes a
dataset (examples.py), trains, scores the held-out conversations and writes the overlay with its
provenance.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..errors import UsageError
from ..overlay.files import Overlay, save_overlay
from ..overlay.takens_torch import TakensLoRA
from ..trust.builtin import VerifiedModel
from .adapter import TakensAdapter, load_base, resolve_precision
from .batching import BaseCache, Example, Schedule, cache_dtype
from .choices import TrainConfig
from .dataset import Dataset
from .distributed import all_mean, current, init_from_env
from .examples import preservation_examples, split_examples
from .objective import barrier
from .terms import TARGETS, Fit, heldout_nll, step_loss

CHECKPOINT = "checkpoint.pt"


class CheckpointMismatch(UsageError):
    """`--resume` from a checkpoint made with other settings: resuming would mix two trainings."""


@dataclass
class StepLog:
    step: int
    nll: float
    barrier: float
    kl: float  # the aggregated KL before tau


@dataclass
class TrainResult:
    overlay: Overlay
    log: list[StepLog]
    heldout_nll_off: Optional[float]
    heldout_nll_on: Optional[float]
    tokens_per_second: float


def optimise(
    adapter,
    trainset: list[Example],
    cfg: TrainConfig,
    out: Optional[Path],
    on_step: Optional[Callable[[StepLog], None]] = None,
    resume: bool = False,
    preserve: Sequence[Example] = (),
    fit: Fit = TARGETS,
) -> tuple[list[StepLog], float]:
    """The training loop for any adapter (`.module`, `.logits_at`): NLL + lambda * barrier, or with a
    teacher `fit`, KL(teacher || overlay) + lambda * barrier on the preservation rows (training/heal.py).

    `cfg.batch` conversations per step, in a fixed order; with `preserve` (the base's own replies to
    neutral prompts), each conversation's term also pays lambda * barrier on the divergence along
    one of them, so the overlay is held near the base off its domain too (behaviour preservation,
    docs/overlay-training.md). The base's log-probabilities are computed once, before the first
    step. Under torchrun the batch is split over the processes (distributed.py). Checkpoints every
    `checkpoint_every` steps to `out` (if given; the leading process writes), and `resume`
    continues from there. Returns (log, trained tokens/s, counting this process's tokens times the processes).
    """
    ranks = current()
    if cfg.batch < 1 or cfg.batch % ranks.world:
        raise UsageError(f"a batch of {cfg.batch} conversations cannot be split evenly over {ranks.world} processes")
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        adapter.forward_module = DistributedDataParallel(adapter.module)
    opt = torch.optim.AdamW([p for p in adapter.module.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    log: list[StepLog] = []
    start = 0
    checkpoint = out / CHECKPOINT if out is not None else None
    if out is not None and ranks.leader:
        out.mkdir(parents=True, exist_ok=True)
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != asdict(cfg):
            raise CheckpointMismatch(f"{checkpoint} was made with other settings; start afresh without --resume")
        adapter.module.load_state_dict(state["adapter"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        log, start = [StepLog(**s) for s in state["log"]], state["step"]

    sched = Schedule(len(trainset), len(preserve), cfg.batch, ranks)
    steps = range(start, cfg.steps)
    trained_tokens, t0 = 0, time.perf_counter()  # the base's one pass is part of the training time
    cache = BaseCache(adapter, sched, steps, trainset, preserve, cache_dtype(adapter.precision))

    for step in steps:
        loss, terms = step_loss(adapter, cfg, sched, step, trainset, preserve, cache, fit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trained_tokens += sum(len(trainset[i].ids) for i in sched.domain(step))
        trained_tokens += sum(len(preserve[j].ids) for j in sched.preserve(step))
        n = terms.n_domain
        logged = all_mean(
            torch.stack([terms.nll.mean(), barrier(terms.charged, cfg.tau).sum() / n, terms.charged[:n].mean()]).detach(),
            ranks,
        ).tolist()
        entry = StepLog(step + 1, *logged)
        log.append(entry)
        if on_step is not None:
            on_step(entry)
        last = step + 1 == cfg.steps
        if checkpoint is not None and ranks.leader and ((step + 1) % cfg.checkpoint_every == 0 or last):
            torch.save(
                {
                    "config": asdict(cfg),
                    "step": step + 1,
                    "adapter": adapter.module.state_dict(),
                    "optimizer": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "log": [asdict(s) for s in log],
                },
                checkpoint,
            )
    if next(adapter.module.parameters()).is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return log, trained_tokens * ranks.world / elapsed if elapsed > 0 else 0.0


def train(
    model: VerifiedModel,
    dataset: Dataset,
    cfg: TrainConfig,
    out: Path,
    on_step: Optional[Callable[[StepLog], None]] = None,
    resume: bool = False,
    base=None,
    preserve_prompts: Optional[list[str]] = None,
) -> TrainResult:
    """Train a Takens-LoRA overlay and write overlay.json + overlay.safetensors (with provenance) to `out`.

    `base` is the frozen torch base if the caller already loaded it (see `load_base`);
    `preserve_prompts` are neutral prompts on which the overlay is held near the base.
    """
    held, trainset = split_examples(model, dataset, cfg)
    preserve = preservation_examples(model, preserve_prompts) if preserve_prompts else []
    return train_examples(
        model, dataset.sha256, len(dataset.conversations), held, trainset, cfg, out, on_step, resume, base, preserve
    )


def train_examples(
    model: VerifiedModel,
    dataset_sha256: str,
    conversations: int,
    held: list[Example],
    trainset: list[Example],
    cfg: TrainConfig,
    out: Path,
    on_step: Optional[Callable[[StepLog], None]] = None,
    resume: bool = False,
    base=None,
    preserve: Sequence[Example] = (),
) -> TrainResult:
    """`train` on examples already tokenised (a GPU machine need not have llama.cpp).

    Under torchrun every process calls this; the leading one writes the files.
    """
    if not trainset:
        raise UsageError("no conversation left to train on after the held-out split")
    ranks = init_from_env(cfg.device)
    device = ranks.device(cfg.device)
    torch.manual_seed(cfg.seed)
    base = base if base is not None else load_base(model, device)
    overlay = TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation).to(device)
    adapter = TakensAdapter(base, overlay, resolve_precision(cfg))
    log, speed = optimise(adapter, trainset, cfg, out, on_step, resume, preserve)

    nll_off, nll_on = heldout_nll(adapter, held, cfg, on=False), heldout_nll(adapter, held, cfg)
    training = {
        "recipe": "takens-lora: nll + lambda * (relu(agg(kl) - tau) + relu(agg(kl on a neutral base reply) - tau))"
        if preserve
        else "takens-lora: nll + lambda * relu(agg(kl) - tau)",
        "dataset_sha256": dataset_sha256,
        "dataset_conversations": conversations,
        "heldout_conversations": len(held),
        "preservation_replies": len(preserve),
        "config": {**asdict(cfg), "delays": list(cfg.delays)},
        "processes": ranks.world,
        "steps": len(log),
        "final_nll": log[-1].nll if log else None,
        "final_barrier": log[-1].barrier if log else None,
        "heldout_nll_off": nll_off,
        "heldout_nll_on": nll_on,
        "tokens_per_second": speed,
        "code_version": __version__,
    }
    result = TrainResult(Overlay(overlay.to_params(), model.sha256, training), log, nll_off, nll_on, speed)
    if ranks.leader:
        save_overlay(result.overlay, out)
    return result
