"""The trainer: a Takens-LoRA overlay on a frozen base, loaded from the same GGUF in torch.

A batch of conversations per step, right-padded side by side (`Batch`). The
base's log-probabilities at the target positions are computed once, before
the first step, by the same model without the overlay (one copy of the
weights, and the reference really is the base); every step runs the base once,
with the overlay, and reads the reference from that cache. On a GPU the base
runs under bf16 autocast; under torchrun the batch is split over processes
(distributed.py). Deterministic on the CPU for a given seed. Batches, the step
schedule and the base's cache are in batching.py.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from torch.nn import functional as F

from .. import __version__
from ..errors import UsageError
from ..overlay.files import Overlay, save_overlay
from ..overlay.takens_torch import TakensLoRA
from ..runtime.embeddings import architecture_of
from ..trust.builtin import VerifiedModel
from .batching import BaseCache, Batch, Example, Schedule, cache_dtype, chunk_tokens, chunks
from .choices import PRECISIONS, TrainConfig
from .dataset import Dataset
from .distributed import all_mean, current, init_from_env
from .objective import aggregate_each, barrier, kl_of_logprobs, nll, per_position_kl, segment_mean

if TYPE_CHECKING:
    from ..runtime.chat_template import BuiltinTemplate, ChatTemplate

    Template = ChatTemplate | BuiltinTemplate
    from ..runtime.session import Runtime

CHECKPOINT = "checkpoint.pt"


class CheckpointMismatch(UsageError):
    """`--resume` from a checkpoint made with other settings: resuming would mix two trainings."""


class BaseNotTrainable(UsageError):
    """transformers cannot load this base's architecture from a GGUF, so no overlay can be trained for it."""


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
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar owns the terminal
    architecture = architecture_of(model.path)
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise BaseNotTrainable(f"{model.name}: transformers cannot load a {architecture!r} GGUF, so it cannot be trained here")
    try:
        base = AutoModelForCausalLM.from_pretrained(str(model.path.parent), gguf_file=model.path.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:  # how transformers says an architecture is not mapped
        raise BaseNotTrainable(f"{model.name}: transformers could not load this {architecture!r} GGUF ({e})") from None
    base.requires_grad_(False)
    return base.eval().to(device)


def encode(runtime: "Runtime", conversation: list[dict], max_len: int, template: Optional["Template"] = None) -> Example:
    """Token ids of the rendered conversation and which of them are assistant tokens (the targets).

    The rendering grows message by message; each assistant turn's generation
    prompt is context, its content and end-of-turn are targets. `template`
    replaces the base's own chat template (`runtime.template`). A template
    with no system role folds a system message into the first user turn; the
    growing rendering still holds, as long as each rendering begins with the
    one before it.
    """
    tokenize, render = runtime.engine.tokenize, (template or runtime.template).render
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

    The device and precision are where and how it was trained, not properties of the overlay:
    evaluation runs here, on the CPU, in float32.
    """
    recorded = {k: v for k, v in overlay.training.get("config", {}).items() if k not in ("device", "precision")}
    if "delays" in recorded:
        recorded["delays"] = tuple(recorded["delays"])
    return TrainConfig(**{k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__})


def preservation_examples(
    model: VerifiedModel, prompts: list[str], max_tokens: int = 48, template: Optional["Template"] = None
) -> list[Example]:
    """The base's own greedy replies to neutral prompts, as examples whose targets are the reply."""
    from ..runtime.sampler import GREEDY
    from ..runtime.session import Runtime, Session

    runtime = Runtime(model, n_ctx=1024)
    if template is not None:
        runtime.template = template
    try:
        out = []
        for prompt in prompts:
            reply = Session(runtime, settings=GREEDY).generate(prompt, max_tokens=max_tokens)
            ids = reply.prompt + reply.tokens
            out.append(Example(torch.tensor(ids), torch.tensor([False] * len(reply.prompt) + [True] * len(reply.tokens))))
        return [ex for ex in out if ex.target[1:].any()]
    finally:
        runtime.close()


def split_examples(
    model: VerifiedModel, dataset: Dataset, cfg: TrainConfig, template: Optional["Template"] = None
) -> tuple[list[Example], list[Example]]:
    """(held out, training) examples: a seeded permutation, so a report can recover the same split."""
    from ..runtime.session import Runtime  # llama.cpp: the runtime's own tokenizer and template

    runtime = Runtime(model, n_ctx=max(512, cfg.max_len + 8))
    try:
        examples = [encode(runtime, conv, cfg.max_len, template) for conv in dataset.conversations]
    finally:
        runtime.close()
    examples = [ex for ex in examples if ex.target[1:].any()]
    order = np.random.default_rng(cfg.seed).permutation(len(examples))
    n_held = int(round(cfg.holdout * len(examples)))
    return [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]


class TakensAdapter:
    """The base seen through a Takens-LoRA overlay. The reference pass is the same model without it.

    The base is a transformers `*ForCausalLM` (its decoder under `.model`, its head the output
    embeddings). With `precision="bf16"` the base runs under bfloat16 autocast: its matrix products
    in bf16, its residual stream and norms in float32; the overlay, the logits' softmax, the loss
    and the KL stay in float32.
    """

    def __init__(self, base, overlay: TakensLoRA, precision: str = "fp32"):
        self.base, self.module = base, overlay
        self.forward_module = overlay  # what the forward pass calls: the DDP wrapper under torchrun
        self.precision = precision
        self.bf16 = precision == "bf16"

    def _autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def logits_at(self, batch: "Batch", on: bool = True) -> torch.Tensor:
        """(n, V) float32 logits at the batch's predicting positions, with the overlay on or off."""
        E = self.base.get_input_embeddings()(batch.ids)  # (B, T, d)
        if on:
            E = self.forward_module(E)
        with self._autocast(E.device):
            hidden = self.base.model(inputs_embeds=E, use_cache=False).last_hidden_state  # (B, T, d)
            logits = self.base.get_output_embeddings()(hidden[batch.rows, batch.cols])  # (n, V): only where it counts
        cap = getattr(self.base.config, "final_logit_softcapping", None)
        logits = logits.float()
        return torch.tanh(logits / cap) * cap if cap else logits

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) -> (T, V) with the overlay on"""
        return self.logits_at(Batch.every_position(ids))

    def reference(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) -> (T, V) of the base alone"""
        with torch.no_grad():
            return self.logits_at(Batch.every_position(ids), on=False)


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {cfg.precision!r}; use one of {', '.join(PRECISIONS)}")
    if cfg.precision == "auto":
        return "bf16" if cfg.device.startswith("cuda") else "fp32"
    return cfg.precision


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


def step_loss(adapter, cfg: TrainConfig, sched: Schedule, step: int, trainset, preserve, cache: BaseCache, fit: Fit = Fit()):
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


def optimise(
    adapter,
    trainset: list[Example],
    cfg: TrainConfig,
    out: Optional[Path],
    on_step: Optional[Callable[[StepLog], None]] = None,
    resume: bool = False,
    preserve: Sequence[Example] = (),
    fit: Fit = Fit(),
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
    template: Optional["Template"] = None,
) -> TrainResult:
    """Train a Takens-LoRA overlay and write overlay.json + overlay.safetensors (with provenance) to `out`.

    `base` is the frozen torch base if the caller already loaded it (see `load_base`);
    `preserve_prompts` are neutral prompts on which the overlay is held near the base;
    `template` renders the conversations instead of the base's own chat template.
    """
    held, trainset = split_examples(model, dataset, cfg, template)
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
