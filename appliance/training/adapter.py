"""The base for training and the overlay on it: the frozen base, dequantised in torch from the very GGUF
the runtime verified, and `TakensAdapter`, that base seen through a Takens-LoRA overlay.

    E      = embed(ids)                    (B, T, d)
    E      = overlay(E)                    (B, T, d)  only with the overlay on; off, the reference pass
    h      = decoder(inputs_embeds=E)      (B, T, d)  under bf16 autocast when the precision is bf16
    logits = head(h[rows, cols])           (n, V)     only at the batch's predicting positions
    logits = tanh(logits / cap) * cap      (n, V)     float32; where the base caps its logits (Gemma)

One copy of the weights: the reference is the same model with the overlay off.
"""

import torch

from ..errors import UsageError
from ..overlay.takens_torch import TakensLoRA
from ..runtime.embeddings import architecture_of
from ..trust.builtin import VerifiedModel
from .batching import Batch
from .choices import PRECISIONS, TrainConfig


class BaseNotTrainable(UsageError):
    """transformers cannot load this base's architecture from a GGUF, so no overlay can be trained for it."""


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
        E = self.base.get_input_embeddings()(batch.ids).float()  # (B, T, d); float32 for the overlay even from a bf16 base
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
