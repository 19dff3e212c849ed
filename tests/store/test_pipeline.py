"""The import's and the start's copy through stages on threads (`store.pipeline`): order, bounded memory, failures."""

import io
import threading

import pytest

from appliance.store import pipeline


class Recorder:
    def __init__(self, fail_at: int = -1, wait: threading.Event | None = None):
        self.data, self.closed, self.fail_at, self.wait = bytearray(), False, fail_at, wait

    def write(self, data: memoryview) -> None:
        if self.wait is not None:
            self.wait.wait(5)
        if len(self.data) >= self.fail_at >= 0:
            raise OSError("disk full")
        self.data += data

    def close(self) -> None:
        self.closed = True


class Source:
    """Counts its reads; raises at read number `fail_at`."""

    def __init__(self, data: bytes, fail_at: int = -1):
        self.src, self.reads, self.fail_at = io.BytesIO(data), 0, fail_at

    def readinto(self, buffer: bytearray) -> int:
        self.reads += 1
        if self.reads == self.fail_at:
            raise ValueError("the bundle's tar ends early")
        return self.src.readinto(buffer)


DATA = bytes(range(256)) * 4099  # not a multiple of the chunk


def test_every_stage_sees_every_byte_in_order_then_closes():
    stages = [Recorder(), Recorder()]
    assert pipeline.stream(Source(DATA), stages, chunk=1000) == len(DATA)
    assert all(s.data == DATA and s.closed for s in stages)


def test_the_reader_stays_at_most_depth_buffers_ahead_of_the_slowest_stage():
    slow = threading.Event()
    source = Source(DATA)
    done = threading.Thread(target=pipeline.stream, args=(source, [Recorder(), Recorder(wait=slow)]), kwargs={"chunk": 1000})
    done.start()
    threading.Event().wait(0.5)
    assert source.reads == pipeline.DEPTH  # DEPTH buffers filled; the next read waits for one to come back
    slow.set()
    done.join(10)


def test_a_source_that_fails_closes_no_stage():
    """A stage's close may seal a memfd and tell the probe the file is whole: never after a failed read."""
    stages = [Recorder(), Recorder()]
    with pytest.raises(ValueError, match="ends early"):
        pipeline.stream(Source(DATA, fail_at=3), stages, chunk=1000)
    assert not any(s.closed for s in stages) and all(len(s.data) == 2000 for s in stages)


def test_a_stage_that_fails_stops_the_reader_and_is_raised():
    stages = [Recorder(), Recorder(fail_at=3000)]
    source = Source(DATA)
    with pytest.raises(OSError, match="disk full"):
        pipeline.stream(source, stages, chunk=1000)
    assert source.reads <= 3 + pipeline.DEPTH + 1 and not any(s.closed for s in stages)
