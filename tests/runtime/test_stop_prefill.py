"""A stop (the kill-switch's cancel, the chat's stop key) lands inside a prefill, not after it, and
leaves the decoder as a fresh session would find it (decoder.py, rule 6)."""

import signal
import threading

import llama_cpp as C
import pytest

from appliance.runtime import llama
from appliance.runtime.llama import DecodeStopped
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Session

LONG = " ".join(f"Note {i}: the keeper lit the lamp, wound the clock and logged the weather." for i in range(90))
SHORT = "Name a colour."


def _first_batch_cached(runtime) -> bool:
    return C.llama_memory_seq_pos_max(runtime.engine.memory, runtime.decoder.current.seq_id) >= runtime.engine.n_batch - 1


def _cached(runtime) -> int:
    return C.llama_memory_seq_pos_max(runtime.engine.memory, runtime.decoder.current.seq_id) + 1


class SetOnceFirstBatchCached(threading.Event):
    """Reads as set once the cache holds the prompt's first batch: the stop lands inside a later batch."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime

    def is_set(self) -> bool:
        return _first_batch_cached(self.runtime)


class CtrlCOnceFirstBatchCached(threading.Event):
    """Never set; presses Ctrl-C (SIGINT to this process) once the cache holds the prompt's first batch."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime, self.pressed = runtime, False

    def is_set(self) -> bool:
        if not self.pressed and _first_batch_cached(self.runtime):
            self.pressed = True
            signal.raise_signal(signal.SIGINT)
        return False


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's own SIGINT handler, as in a terminal: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and then a Ctrl-C rightly does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_stop_lands_inside_the_prefill_and_the_next_reply_is_a_fresh_sessions(runtime):
    engine = runtime.engine
    runtime.decoder.reset()
    reply = Session(runtime, settings=GREEDY).generate(LONG, max_tokens=8, cancel=SetOnceFirstBatchCached(runtime))
    assert reply.finish == "cancelled" and reply.tokens == []
    assert len(reply.prompt) > 2 * engine.n_batch  # at least one batch was left to compute when it stopped
    assert _cached(runtime) < len(reply.prompt), "the prefill ran to its end: the stop was read only after it"

    after = Session(runtime, settings=GREEDY).generate(SHORT, max_tokens=8)
    runtime.decoder.reset()
    fresh = Session(runtime, settings=GREEDY).generate(SHORT, max_tokens=8)
    assert after.tokens == fresh.tokens and after.tokens


def test_ctrl_c_during_a_prefill_stops_it_and_is_raised(runtime):
    """Python runs signal handlers inside llama.cpp's abort callback; Ctrl-C's KeyboardInterrupt must not be
    lost there (ctypes would print and drop it): it stops the prefill and reaches the caller."""
    runtime.decoder.reset()
    ctrl_c = CtrlCOnceFirstBatchCached(runtime)
    with pytest.raises(KeyboardInterrupt):
        Session(runtime, settings=GREEDY).generate(LONG, max_tokens=8, cancel=ctrl_c)
    assert ctrl_c.pressed and _cached(runtime) < 2 * runtime.engine.n_batch  # stopped inside its second batch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class Counted(threading.Event):
    """An event that counts how often it is asked."""

    def __init__(self):
        super().__init__()
        self.asked = 0

    def is_set(self) -> bool:
        self.asked += 1
        return super().is_set()


def test_a_quick_step_is_asked_once_before_it_and_a_stop_or_ctrl_c_between_steps_ends_the_reply(runtime, monkeypatch):
    """The abort callback is a Python call at every graph node (3-5% of the embedded model's step): a quick step
    is asked once, before it, and a stop or a Ctrl-C that came during the last one stops the next (llama.py)."""
    engine, decoder = runtime.engine, runtime.decoder
    monkeypatch.setattr(llama, "QUICK_STEP_SECONDS", 60.0)  # every step is quick, however loaded the machine
    decoder.reset()
    stop = Counted()
    with engine.stop_on(stop):
        decoder.prefill(engine.tokenize(SHORT))
        assert stop.asked > 100  # a prefill is asked after every graph node
        decoder.step(42)
        asked = stop.asked
        for _ in range(5):
            decoder.step(42)
        assert stop.asked - asked == 5
        stop.set()
        held = _cached(runtime)
        with pytest.raises(DecodeStopped):
            decoder.step(42)
        assert _cached(runtime) == held == len(decoder.current.tokens)

    with pytest.raises(KeyboardInterrupt), engine.stop_on(Counted()):
        decoder.step(42)
        signal.raise_signal(signal.SIGINT)  # its handler runs now, between the steps
        with pytest.raises(DecodeStopped):
            decoder.step(42)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
