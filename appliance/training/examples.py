"""Conversations into training examples: token ids, and which of them are targets.

    encode(conversation)         ids (T,) int, target (T,) bool: true on assistant content and end-of-turn
    preservation_examples        the base's greedy replies to neutral prompts; targets the reply
    split_examples               a seeded permutation of the encoded dataset -> (held out, training)
    config_of(overlay)           the settings an overlay was trained with, so a report recovers its split

The runtime (llama.cpp) tokenises and renders (the base's built-in chat template, `runtime.template`),
so a conversation is trained on the tokens the appliance reads. `split_examples` and
`preservation_examples` drop an example with no target after its first token (nothing to predict).
"""

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UsageError
from ..overlay.files import Overlay
from ..trust.builtin import VerifiedModel
from .batching import Example
from .choices import TrainConfig
from .dataset import Dataset

if TYPE_CHECKING:
    from ..runtime.session import Runtime


def encode(runtime: "Runtime", conversation: list[dict], max_len: int) -> Example:
    """Token ids of the rendered conversation and which of them are assistant tokens (the targets).

    The rendering grows message by message; each assistant turn's generation
    prompt is context, its content and end-of-turn are targets. A template
    with no system role folds a system message into the first user turn; the
    growing rendering still holds, as long as each rendering begins with the
    one before it.
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

    The device and precision are where and how it was trained, not properties of the overlay:
    evaluation runs here, on the CPU, in float32.
    """
    recorded = {k: v for k, v in overlay.training.get("config", {}).items() if k not in ("device", "precision")}
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
