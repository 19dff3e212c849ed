"""A stop (the kill-switch's cancel, the chat's stop key) lands inside a prefill, not after it, and
leaves the decoder as a fresh session would find it (decoder.py, rule 6)."""

import threading

import llama_cpp as C

from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Session

LONG = " ".join(f"Note {i}: the keeper lit the lamp, wound the clock and logged the weather." for i in range(90))
SHORT = "Name a colour."


class SetOnceFirstBatchCached(threading.Event):
    """Reads as set once the cache holds the prompt's first batch: the stop lands inside a later batch."""

    def __init__(self, engine, seq_id: int):
        super().__init__()
        self.engine, self.seq_id = engine, seq_id

    def is_set(self) -> bool:
        return C.llama_memory_seq_pos_max(self.engine.memory, self.seq_id) >= self.engine.n_batch - 1


def test_a_stop_lands_inside_the_prefill_and_the_next_reply_is_a_fresh_sessions(runtime):
    engine = runtime.engine
    runtime.decoder.reset()
    stop = SetOnceFirstBatchCached(engine, runtime.decoder.current.seq_id)
    reply = Session(runtime, settings=GREEDY).generate(LONG, max_tokens=8, cancel=stop)
    assert reply.finish == "cancelled" and reply.tokens == []
    assert len(reply.prompt) > 2 * engine.n_batch  # at least one batch was left to compute when it stopped
    cached = C.llama_memory_seq_pos_max(engine.memory, runtime.decoder.current.seq_id) + 1
    assert cached < len(reply.prompt), "the prefill ran to its end: the stop was read only after it"

    after = Session(runtime, settings=GREEDY).generate(SHORT, max_tokens=8)
    runtime.decoder.reset()
    fresh = Session(runtime, settings=GREEDY).generate(SHORT, max_tokens=8)
    assert after.tokens == fresh.tokens and after.tokens
