"""The thread count both sides of a fixed-thread comparison run with: the cores other processes leave free now.

ggml's threads meet at a barrier after every operation, so on a core another process keeps busy one
thread stalls the rest (appliance/runtime/threads.py: two threads on two cores with one busy
neighbour decode at 0.3x): with every core fixed, a busy machine measures its neighbours, not the
code, and a run of the bench can take an hour. Read once, when a measurement starts, from the same
counters the runtime's governor reads, and given to ours and the reference alike.
"""

import time

from appliance.runtime.threads import ThreadGovernor


def free_threads(seconds: float = 1.0) -> int:
    """Our cores less those the other processes kept busy over the last `seconds`; at least 1."""
    governor = ThreadGovernor(period=seconds)
    time.sleep(seconds)
    governor.threads_now()
    return max(1, min(governor.max, round(governor.max - governor.others)))
