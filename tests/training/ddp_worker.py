"""One process of the DDP wiring test (tests/training/test_ddp.py): a tiny random base, a few batched steps.

Run by `torchrun --nproc_per_node 2 ddp_worker.py OUT` (two gloo processes on the CPU), or called in
the test's own process as the single-process reference. The leading process saves what the test compares.
"""

import sys

import torch

from appliance.overlay.takens_torch import TakensLoRA
from appliance.training.adapter import TakensAdapter
from appliance.training.batching import Example, Schedule
from appliance.training.choices import TrainConfig
from appliance.training.distributed import init_from_env
from appliance.training.trainer import optimise

CFG = TrainConfig(steps=3, batch=4, lr=1e-2, tau=0.0, lam=1.0, agg="rmse", checkpoint_every=100)
HIDDEN, VOCAB = 32, 61


def tiny_base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config).requires_grad_(False).eval()


def examples(n: int, seed: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + 3 * i
        target = torch.zeros(length, dtype=torch.bool)
        target[length // 2 :] = True
        out.append(Example(torch.randint(0, VOCAB, (length,), generator=g), target))
    return out


def train() -> dict:
    """The overlay after CFG.steps on 6 conversations and 3 preservation replies, and what this process read."""
    torch.set_num_threads(1)
    ranks = init_from_env("cpu")
    trainset, preserve = examples(6, seed=1), examples(3, seed=2)
    torch.manual_seed(3)
    overlay = TakensLoRA(HIDDEN, 4, (0, 1, 2), 8.0, "tanh")
    with torch.no_grad():
        overlay.B.normal_(std=0.05)  # off the identity: every parameter has a gradient from the first step
    start = {k: v.detach().clone() for k, v in overlay.state_dict().items()}
    log, _ = optimise(TakensAdapter(tiny_base(), overlay), trainset, CFG, None, preserve=preserve)
    read = Schedule(len(trainset), len(preserve), CFG.batch, ranks).domain(0)
    return {"params": {k: v.detach().clone() for k, v in overlay.state_dict().items()}, "log": log, "read": read, "start": start,
            "rank": ranks.rank, "world": ranks.world}  # fmt: skip


if __name__ == "__main__":
    result = train()
    torch.save(result, f"{sys.argv[1]}.rank{result['rank']}")
