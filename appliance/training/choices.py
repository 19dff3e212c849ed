"""The training recipe's settings and named choices, importable without torch (the CLI takes its defaults from here)."""

from dataclasses import dataclass

from ..overlay.params import DEFAULT_DELAYS

AGGREGATES = ("mean", "rmse", "p95", "max")  # how the per-position KL of a sequence folds into one number
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast for the base on a GPU, float32 everywhere on the CPU


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    delays: tuple[int, ...] = DEFAULT_DELAYS
    alpha: float = 8.0
    activation: str = "tanh"
    steps: int = 200
    lr: float = 2e-3
    lam: float = 1.0  # weight of the KL barrier
    tau: float = 0.5  # nats the aggregated KL may reach before the barrier acts
    agg: str = "rmse"
    seed: int = 0
    holdout: float = 0.1  # fraction of conversations kept out of training
    max_len: int = 384  # tokens per conversation, longer ones are cut
    device: str = "cpu"
    checkpoint_every: int = 50
    batch: int = 1  # conversations per optimiser step (and as many preservation replies), over all processes
    precision: str = "auto"
