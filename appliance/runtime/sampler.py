"""Next-token choice from raw logits: greedy, or repetition penalty -> temperature -> top-k -> top-p -> draw.

Two implementations of the same stages in the same order:
  `NativeSampler`  llama.cpp's sampler chain, reading the engine's logits in C: what a reply uses
                   (plain greedy, no penalty, is an argmax over the logits row, as llama.cpp's greedy
                   stage computes it, without the chain's per-token copy of the whole vocabulary);
  `Sampler`        numpy over a logits row: the reference the chain is tested against, and for code
                   that holds the whole distribution anyway.
Greedy (with or without the penalty) picks the same token in both. With a
temperature both keep the same candidates and draw with the same probabilities
(float32 in C, float64 in numpy), but from different generators (llama.cpp's
mt19937, numpy's PCG64): a seed gives the same text every time within one
implementation, not across them.
"""

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .llama import LlamaEngine, SamplerChain


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.7  # 0 means greedy
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1 disables
    repeat_penalty: float = 1.1  # 1 disables
    repeat_last_n: int = 64
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)


class NativeSampler:
    """The stages in llama.cpp's sampler chain; `context` is what the penalty may look back on (the prompt)."""

    def __init__(self, engine: LlamaEngine, settings: SamplingSettings, context: list[int]):
        s = settings
        self._engine = engine
        self.chain: Optional[SamplerChain] = None
        if s.temperature <= 0.0 and (s.repeat_penalty == 1.0 or s.repeat_last_n <= 0):
            # Plain greedy: the chain would copy every logit into a candidate array first (about 0.13 ms a
            # token for a 49k vocabulary here, 2-3% of a decode step of the embedded model); np.argmax picks
            # the first largest, as llama.cpp's greedy stage does.
            return
        self.chain = SamplerChain(engine)
        if s.repeat_penalty != 1.0 and s.repeat_last_n > 0:
            self.chain.penalties(s.repeat_last_n, s.repeat_penalty)
            self.chain.accept(context[-s.repeat_last_n :])
        if s.temperature <= 0.0:
            self.chain.greedy()
            return
        self.chain.temperature(s.temperature)
        if s.top_k > 0:
            self.chain.top_k(s.top_k)
        if s.top_p < 1.0:
            self.chain.top_p(s.top_p)
        self.chain.draw(s.seed)

    def __call__(self) -> int:
        """The next token after the engine's last decoded position; the chain remembers it for the penalty."""
        if self.chain is None:
            return int(np.argmax(self._engine.last_logits()))
        return self.chain.sample()

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()


class Sampler:
    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        s = self.settings
        if s.repeat_penalty != 1.0 and history:
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-s.repeat_last_n :]))
            seen = logits[recent]
            # CTRL-style: push seen tokens toward "less likely" whatever their sign.
            logits[recent] = np.where(seen > 0, seen / s.repeat_penalty, seen * s.repeat_penalty)
        if s.temperature <= 0.0:
            return int(np.argmax(logits))

        z = logits.astype(np.float64) / s.temperature
        if 0 < s.top_k < len(z):
            candidates = np.argpartition(z, -s.top_k)[-s.top_k :]
        else:
            candidates = np.arange(len(z))
        candidates = candidates[np.argsort(-z[candidates], kind="stable")]  # most likely first
        probs = np.exp(z[candidates] - z[candidates[0]])
        probs /= probs.sum()
        if s.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1  # smallest prefix with mass >= top_p
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        return int(candidates[self.rng.choice(len(candidates), p=probs)])
