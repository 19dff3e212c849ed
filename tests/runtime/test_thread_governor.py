"""The thread count follows the CPU that other processes take from our cores; a number given is kept."""

import subprocess
import time

from appliance.runtime.llama import LlamaEngine
from appliance.runtime.threads import CpuTime, ThreadGovernor, our_cores, read_cpu

TICKS = 100  # clock ticks per second on Linux


class Machine:
    """Fake counters: each `run` advances the clock by one period while others and we use so many cores."""

    def __init__(self):
        self.wall, self.busy, self.ours = 0.0, 0, 0

    def clock(self) -> float:
        return self.wall

    def read(self) -> CpuTime:
        return CpuTime(self.busy, self.ours)

    def run(self, others: float, ours: float, seconds: float = 0.5) -> None:
        self.wall += seconds
        self.busy += round((others + ours) * seconds * TICKS)
        self.ours += round(ours * seconds * TICKS)


def _governor(machine, cores=2):
    g = ThreadGovernor(cores=list(range(cores)), period=0.5, read=machine.read, clock=machine.clock)
    g._ticks_per_second = TICKS
    return g


def test_a_busy_neighbour_takes_a_thread_and_gives_it_back():
    m = Machine()
    g = _governor(m)
    assert g.threads_now() == 2
    m.run(others=0.05, ours=2.0)  # quiet: we keep both cores
    assert g.threads_now() == 2
    m.run(others=0.67, ours=1.33)  # one `yes` shares the cores with our two threads
    assert g.threads_now() == 1
    for _ in range(3):
        m.run(others=1.0, ours=1.0)  # it keeps one core: one thread is right, and stays
        assert g.threads_now() == 1
    m.run(others=0.0, ours=1.0)  # it ended
    assert g.threads_now() == 2


def test_a_light_or_short_load_changes_nothing():
    m = Machine()
    g = _governor(m, cores=4)
    m.run(others=0.4, ours=4.0)
    assert g.threads_now() == 4
    m.run(others=3.0, ours=1.0, seconds=0.2)  # within the period: not read yet
    assert g.threads_now() == 4


def test_it_never_goes_below_one_thread_or_above_our_cores():
    m = Machine()
    g = _governor(m)
    for _ in range(5):
        m.run(others=2.0, ours=0.5)
        assert g.threads_now() == 1
    g = _governor(m, cores=1)
    m.run(others=0.0, ours=1.0)
    assert g.threads_now() == 1


def test_unreadable_counters_keep_every_core():
    m = Machine()
    g = ThreadGovernor(cores=[0, 1], read=lambda: None, clock=m.clock)
    m.run(others=2.0, ours=0.0)
    assert g.threads_now() == 2


def test_the_real_counters_see_a_busy_process_on_our_cores():
    cores = our_cores()
    before, t0 = read_cpu(cores), time.monotonic()
    hog = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1.0)
    finally:
        hog.kill()
        hog.wait()
    after, seconds = read_cpu(cores), time.monotonic() - t0
    others = ((after.busy - before.busy) - (after.ours - before.ours)) / (seconds * TICKS)
    assert after.ours >= before.ours
    assert others > 0.5, "a process spinning for the whole second is other processes' CPU time"


def test_a_thread_count_given_is_kept(model):
    fixed = LlamaEngine(model.path, n_ctx=256, n_threads=2)
    governed = LlamaEngine(model.path, n_ctx=256)
    try:
        assert fixed.governor is None and fixed.settings.n_threads == 2
        assert governed.governor is not None and governed.settings.n_threads is None
        assert governed.n_threads == len(our_cores())
    finally:
        fixed.close()
        governed.close()


def test_the_engine_decodes_with_the_governors_count(model):
    m = Machine()
    engine = LlamaEngine(model.path, n_ctx=256)
    try:
        engine.governor = _governor(m, cores=2)
        engine.decode_tokens([1, 2, 3], 0)
        assert engine.n_threads == 2
        m.run(others=1.0, ours=1.0)
        engine.decode_tokens([4], 3)
        assert engine.n_threads == 1
        m.run(others=0.0, ours=1.0)
        engine.decode_tokens([5], 4)
        assert engine.n_threads == 2
    finally:
        engine.close()
