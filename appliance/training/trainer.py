"""The trainer: a Takens-LoRA overlay on a frozen base, loaded from the same GGUF in torch.

One conversation per step. The base model runs twice per step on the same
input embeddings: with the overlay (trained) and without it (the reference
pass, under no_grad): one copy of the weights, and the reference really is
the base. Deterministic on the CPU for a given seed.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .. import __version__
from ..errors import UsageError
from ..overlay.files import Overlay, save_overlay
from ..overlay.takens_torch import TakensLoRA
from ..trust.builtin import VerifiedModel
from .choices import TrainConfig
from .dataset import Dataset
from .objective import aggregate, barrier, nll, per_position_kl

if TYPE_CHECKING:
    from ..runtime.session import Runtime

CHECKPOINT = "checkpoint.pt"


class CheckpointMismatch(UsageError):
    """`--resume` from a checkpoint made with other settings: resuming would mix two trainings."""


@dataclass
class Example:
    ids: torch.Tensor  # (T,) token ids
    target: torch.Tensor  # (T,) bool: this token belongs to an assistant turn


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


def load_base(model: VerifiedModel, device: str = "cpu"):
    """The base as a frozen float32 torch model, dequantised from the very GGUF the runtime verified."""
    from transformers import AutoModelForCausalLM  # heavy: only the build station pays for it
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar owns the terminal

    base = AutoModelForCausalLM.from_pretrained(str(model.path.parent), gguf_file=model.path.name, dtype=torch.float32)
    base.requires_grad_(False)
    return base.eval().to(device)


def encode(runtime: "Runtime", conversation: list[dict], max_len: int) -> Example:
    """Token ids of the rendered conversation and which of them are assistant tokens (the targets).

    The rendering grows message by message; each assistant turn's generation
    prompt is context, its content and end-of-turn are targets.
    """
    tokenize, render = runtime.engine.tokenize, runtime.template.render
    ids: list[int] = []
    target: list[bool] = []

    def grow(messages: list[dict], generation_prompt: bool, is_target: bool) -> None:
        tokens = tokenize(render(messages, add_generation_prompt=generation_prompt))
        if tokens[: len(ids)] != ids:
            raise UsageError("the chat template does not render this conversation incrementally")
        target.extend([is_target] * (len(tokens) - len(ids)))
        ids[:] = tokens

    for i, message in enumerate(conversation):
        if message["role"] == "assistant":
            grow(conversation[:i], True, False)
        grow(conversation[: i + 1], False, message["role"] == "assistant")
    return Example(torch.tensor(ids[:max_len]), torch.tensor(target[:max_len]))


def config_of(overlay: Overlay) -> TrainConfig:
    """The settings an overlay was trained with, from its own provenance (defaults where absent).

    The device is where it was trained, not a property of the overlay: evaluation runs here, on the CPU.
    """
    recorded = {k: v for k, v in overlay.training.get("config", {}).items() if k != "device"}
    if "delays" in recorded:
        recorded["delays"] = tuple(recorded["delays"])
    return TrainConfig(**{k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__})


def preservation_examples(model: VerifiedModel, prompts: list[str], max_tokens: int = 48) -> list[Example]:
    """The base's own greedy replies to neutral prompts, as examples whose targets are the reply."""
    from ..runtime.sampler import GREEDY
    from ..runtime.session import Runtime, Session

    runtime = Runtime(model, n_ctx=1024)
    try:
        out = []
        for prompt in prompts:
            reply = Session(runtime, settings=GREEDY).generate(prompt, max_tokens=max_tokens)
            ids = reply.prompt + reply.tokens
            out.append(Example(torch.tensor(ids), torch.tensor([False] * len(reply.prompt) + [True] * len(reply.tokens))))
        return [ex for ex in out if ex.target[1:].any()]
    finally:
        runtime.close()


def split_examples(model: VerifiedModel, dataset: Dataset, cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    """(held out, training) examples: a seeded permutation, so a report can recover the same split."""
    from ..runtime.session import Runtime  # llama.cpp: the runtime's own tokenizer and template

    runtime = Runtime(model, n_ctx=max(512, cfg.max_len + 8))
    try:
        examples = [encode(runtime, conv, cfg.max_len) for conv in dataset.conversations]
    finally:
        runtime.close()
    examples = [ex for ex in examples if ex.target[1:].any()]
    order = np.random.default_rng(cfg.seed).permutation(len(examples))
    n_held = int(round(cfg.holdout * len(examples)))
    return [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]


class TakensAdapter:
    """The base seen through a Takens-LoRA overlay. The reference pass is the same model without it."""

    def __init__(self, base, overlay: TakensLoRA):
        self.base, self.module = base, overlay

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.get_input_embeddings()(ids[None])  # (1, T, d)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) -> (T, V) with the overlay on"""
        return self.base(inputs_embeds=self.module(self._embed(ids))).logits[0]

    def reference(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) -> (T, V) of the base alone"""
        with torch.no_grad():
            return self.base(inputs_embeds=self._embed(ids)).logits[0]


def step_terms(adapter, ex: Example, cfg: TrainConfig, on: bool = True):
    """NLL (adapter on, or the base if not `on`) and per-position KL to the base, at positions predicting assistant tokens."""
    ids = ex.ids.to(cfg.device)
    predicts = ex.target[1:].to(cfg.device)  # position t predicts token t+1
    targets = ids[1:][predicts]
    logits_base = adapter.reference(ids)[:-1][predicts]  # (n, V)
    if not on:
        return nll(logits_base, targets), torch.zeros(len(logits_base))
    logits_on = adapter.logits(ids)[:-1][predicts]  # (n, V)
    return nll(logits_on, targets), per_position_kl(logits_on, logits_base)


def heldout_nll(adapter, examples: list[Example], cfg: TrainConfig, on: bool = True) -> Optional[float]:
    if not examples:
        return None
    with torch.no_grad():
        return float(np.mean([step_terms(adapter, ex, cfg, on)[0].item() for ex in examples]))


def optimise(
    adapter,
    trainset: list[Example],
    cfg: TrainConfig,
    out: Optional[Path],
    on_step: Optional[Callable[[StepLog], None]] = None,
    resume: bool = False,
    preserve: list[Example] = (),
) -> tuple[list[StepLog], float]:
    """The training loop for any adapter (`.module`, `.logits`, `.reference`): NLL + lambda * barrier.

    One conversation per step, in a fixed order; with `preserve` (the base's own replies to
    neutral prompts), each step also pays lambda * barrier on the divergence along one of them,
    so the overlay is held near the base off its domain too (behaviour preservation, docs/overlay-training.md).
    Checkpoints every `checkpoint_every` steps to `out` (if given), and `resume` continues from
    there. Returns (log, trained tokens/s).
    """
    opt = torch.optim.AdamW([p for p in adapter.module.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    log: list[StepLog] = []
    start = 0
    checkpoint = out / CHECKPOINT if out is not None else None
    if checkpoint is not None:
        out.mkdir(parents=True, exist_ok=True)
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != asdict(cfg):
            raise CheckpointMismatch(f"{checkpoint} was made with other settings; start afresh without --resume")
        adapter.module.load_state_dict(state["adapter"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        log, start = [StepLog(**s) for s in state["log"]], state["step"]

    trained_tokens, t0 = 0, time.perf_counter()
    for step in range(start, cfg.steps):
        ex = trainset[step % len(trainset)]
        nll_term, kl = step_terms(adapter, ex, cfg)
        divergence = aggregate(kl, cfg.agg)
        bar = barrier(divergence, cfg.tau)
        if preserve:
            neutral = preserve[step % len(preserve)]
            bar = bar + barrier(aggregate(step_terms(adapter, neutral, cfg)[1], cfg.agg), cfg.tau)
            trained_tokens += len(neutral.ids)
        loss = nll_term + cfg.lam * bar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trained_tokens += len(ex.ids)
        entry = StepLog(step + 1, nll_term.item(), bar.item(), divergence.item())
        log.append(entry)
        if on_step is not None:
            on_step(entry)
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
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
    elapsed = time.perf_counter() - t0
    return log, trained_tokens / elapsed if elapsed > 0 else 0.0


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
    preserve: list[Example] = (),
) -> TrainResult:
    """`train` on examples already tokenised (a GPU machine need not have llama.cpp)."""
    if not trainset:
        raise UsageError("no conversation left to train on after the held-out split")
    torch.manual_seed(cfg.seed)
    base = base if base is not None else load_base(model, cfg.device)
    overlay = TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation).to(cfg.device)
    adapter = TakensAdapter(base, overlay)
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
        "steps": len(log),
        "final_nll": log[-1].nll if log else None,
        "final_barrier": log[-1].barrier if log else None,
        "heldout_nll_off": nll_off,
        "heldout_nll_on": nll_on,
        "tokens_per_second": speed,
        "code_version": __version__,
    }
    result = TrainResult(Overlay(overlay.to_params(), model.sha256, training), log, nll_off, nll_on, speed)
    save_overlay(result.overlay, out)
    return result
