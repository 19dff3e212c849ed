"""Next-token choice from raw logits: greedy, or repetition penalty -> temperature -> top-k -> top-p -> draw.

Two implementations of the same stages in the same order:
  `NativeSampler`  llama.cpp's sampler chain, reading the engine's logits in C: what a reply uses
                   (the penalty is applied to the row in place for the window's tokens only, by
                   llama.cpp's rule; greedy is an argmax over the row, as llama.cpp's greedy stage
                   computes it, without the chain's per-token copy of the whole vocabulary);
  `Sampler`        numpy over a logits row: the reference the chain is tested against, and for code
                   that holds the whole distribution anyway.
Greedy (with or without the penalty) picks the same token in both. With a
temperature both keep the same candidates and draw with the same probabilities
(float32 in C, float64 in numpy), but from different generators (llama.cpp's
mt19937, numpy's PCG64): a seed gives the same text every time within one
implementation, not across them.
"""

from collections import deque
from collections.abc import Iterable
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


def penalise(logits: np.ndarray, window: Iterable[int], penalty: np.float32) -> None:
    """The repetition penalty, in place, on each distinct token of `window`: llama.cpp's rule (its penalties stage).

    CTRL-style, made to push a seen token toward "less likely" whatever its sign: a logit above 0 is divided by
    the penalty, one at or below 0 multiplied, once however often the token was seen (the stage's frequency
    and presence terms are 0 here), in float32 as llama.cpp computes it.
    """
    seen = np.fromiter(set(window), dtype=np.intp)
    row = logits[seen]
    logits[seen] = np.where(row > 0, row / penalty, row * penalty)


class NativeSampler:
    """The stages in llama.cpp's sampler chain; `context` is what the penalty may look back on (the prompt).

    The repetition penalty is applied here, in place on the engine's logits row, to the tokens of the window
    only, before the chain (or, greedy, an argmax) reads the row: llama.cpp's penalties stage looks every
    vocabulary entry up in a hash map each token (0.15-0.2 ms for the embedded model's 49k vocabulary here,
    growing with the vocabulary: Gemma's is 262k). The window is the stage's: the last `repeat_last_n` tokens
    accepted, the prompt's first, then each token sampled; the rule is `penalise`'s. A step observer has read
    the row before the sampler runs (decoder.py): it sees the logits as the model left them.
    """

    def __init__(self, engine: LlamaEngine, settings: SamplingSettings, context: list[int]):
        s = settings
        self._engine = engine
        self._penalty = np.float32(s.repeat_penalty)  # llama.cpp's stage holds it as a float, and computes in floats
        self._window: Optional[deque[int]] = None
        if s.repeat_penalty != 1.0 and s.repeat_last_n > 0:
            self._window = deque(context[-s.repeat_last_n :], maxlen=s.repeat_last_n)
        self.chain: Optional[SamplerChain] = None
        if s.temperature <= 0.0:
            # Greedy: np.argmax picks the first largest, as llama.cpp's greedy stage does, without the chain's
            # per-token copy of every logit into a candidate array (about 0.13 ms a token for a 49k vocabulary).
            return
        self.chain = SamplerChain(engine).temperature(s.temperature)
        if s.top_k > 0:
            self.chain.top_k(s.top_k)
        if s.top_p < 1.0:
            self.chain.top_p(s.top_p)
        self.chain.draw(s.seed)

    def __call__(self) -> int:
        """The next token after the engine's last decoded position; the window remembers it for the penalty."""
        if self._window:
            penalise(self._engine.last_logits(), self._window, self._penalty)
        token = int(np.argmax(self._engine.last_logits())) if self.chain is None else self.chain.sample()
        if self._window is not None:
            self._window.append(token)
        return token

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()


class Sampler:
    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        s = self.settings
        if s.repeat_penalty != 1.0 and s.repeat_last_n > 0 and history:
            logits = logits.copy()
            penalise(logits, history[-s.repeat_last_n :], np.float32(s.repeat_penalty))
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
