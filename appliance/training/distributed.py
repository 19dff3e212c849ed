"""Training on several processes with torch's own DDP, started by `torchrun` (one process per GPU, or gloo on the CPU).

The overlay's parameters are tiny, so every process holds the whole base and
the whole overlay; the data is split. Each global batch of conversations is
dealt out round-robin (process r takes items r, r + world, ...), each process
weights its share so that DDP's gradient average equals the gradient of the
global batch's mean loss, and the optimiser steps stay identical everywhere.
Outside torchrun (no WORLD_SIZE, or 1) nothing here touches torch.distributed.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0  # the process's index on its machine: which GPU it drives

    @property
    def leader(self) -> bool:
        """The one process that writes files (checkpoints, the overlay) and reports."""
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's part of a global batch."""
        return items[self.rank :: self.world]

    def device(self, device: str) -> str:
        """`cuda` means this process's own GPU under torchrun."""
        return f"cuda:{self.local}" if device == "cuda" and self.world > 1 else device


def init_from_env(device: str) -> Ranks:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def current() -> Ranks:
    """The ranks of a process group already joined, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_mean(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of `values` over the processes (the logged loss terms of a global batch)."""
    if ranks.world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= ranks.world
    return values
