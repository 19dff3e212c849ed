"""How many threads llama.cpp computes with: the cores the process may use, less what other processes keep busy.

ggml's threads meet at a barrier after every operation, so one thread that a busy
neighbour keeps off its core stalls the others: measured on two cores with one
`yes > /dev/null` running, two threads decode at 0.3x their quiet rate, one thread
at 0.98x. So the count follows the load, read while decoding:
  1. every `period` seconds of decoding, the CPU time all processes spent on our
     cores (/proc/stat) less our own (/proc/self/stat) is what the others used;
  2. the cores they leave us = our cores - that, in cores;
  3. one thread fewer when fewer than `threads - 0.5` cores are left, one more
     when more than `threads + 0.5` are (the half-core margins keep a steady
     load from flipping the count back and forth);
  4. never fewer than 1, never more than our cores.
The count changes no result: the engine's numerics do not depend on it
(`llama.FLASH_ATTENTION`). Where /proc cannot be read the count stays at our cores.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class CpuTime:
    busy: int  # clock ticks all processes spent on our cores
    ours: int  # clock ticks this process spent


def our_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def read_cpu(cores: list[int]) -> Optional[CpuTime]:
    """Now's counters, or None where /proc cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    busy = sum(sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4)) for fields in lines if fields[0] in wanted)
    return CpuTime(busy, int(own[11]) + int(own[12]))  # utime, stime


class ThreadGovernor:
    def __init__(
        self,
        cores: Optional[list[int]] = None,
        period: float = 0.5,
        read: Optional[Callable[[], Optional[CpuTime]]] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        cores = cores if cores is not None else our_cores()
        self.max = len(cores)
        self.threads = self.max
        self.period = period
        self._read = read or (lambda: read_cpu(cores))
        self._clock = clock
        self._ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._since, self._last = clock(), self._read()
        self.others = 0.0  # cores the other processes used over the last period

    def threads_now(self) -> int:
        """The thread count for the next decode; reads the counters at most once a period."""
        wall = self._clock()
        if self._last is None or self.max == 1 or wall - self._since < self.period:
            return self.threads
        now = self._read()
        if now is None:
            return self.threads
        ticks = (wall - self._since) * self._ticks_per_second
        self.others = max(0.0, (now.busy - self._last.busy) - (now.ours - self._last.ours)) / ticks
        self._since, self._last = wall, now
        left = self.max - self.others
        if left < self.threads - 0.5 and self.threads > 1:
            self.threads -= 1
        elif left > self.threads + 0.5 and self.threads < self.max:
            self.threads += 1
        return self.threads
