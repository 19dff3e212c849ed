"""Next-token choice from raw logits: greedy, or repetition penalty -> temperature -> top-k -> top-p -> draw.

With a seed, the same logits give the same tokens: the generator is the
sampler's own `numpy.random.Generator`.
"""

from dataclasses import asdict, dataclass

import numpy as np


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
