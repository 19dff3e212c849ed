"""Large artifacts streamed through several stages at once: one thread reads, each stage runs on a thread of its own.

An import reads a base from the bundle, hashes it, copies it into the probe's memfd, encrypts it and
writes it to the disk; a start decrypts it into a memfd. One after another on one thread, each waits
for the others; here the reader fills `DEPTH` buffers in turn, every stage sees every buffer in order,
and a buffer is read into again only once every stage is done with it, so memory stays bounded
(`DEPTH` x `CHUNK`) whatever the artifact's size. hashlib, the AES-GCM of `cryptography` and os.write
release the GIL on large buffers, so the stages run in parallel on as many cores as there are.

A stage that fails stops the reader at its next buffer; the first failure is raised once every
thread has stopped (no thread outlives `stream`).
"""

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Optional, Protocol

from ..trust.hashing import Progress
from ..vault import zeroize

CHUNK = 4 << 20
DEPTH = 4
END, ABORT = "end", "abort"  # what follows the last buffer: the source is done, or it failed


class Fillable(Protocol):
    def readinto(self, buffer: bytearray, /) -> Optional[int]: ...


class Stage(Protocol):
    """Sees every buffer in order (`write`), then `close()` on its own thread once the source is done."""

    def write(self, data: memoryview, /) -> object: ...

    def close(self) -> object: ...


def stream(src: Fillable, stages: Sequence[Stage], progress: Optional[Progress] = None, chunk: int = CHUNK) -> int:
    """Everything readable from `src` through every stage; returns the bytes read."""
    buffers = [bytearray(chunk) for _ in range(DEPTH)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(DEPTH):
        free.put(i)
    holders = [0] * DEPTH  # stages still holding each buffer
    lock = threading.Lock()
    failures: list[BaseException] = []
    inboxes: list[queue.Queue[tuple[int, int] | str]] = [queue.Queue() for _ in stages]

    def release(i: int) -> None:
        with lock:
            holders[i] -= 1
            done = holders[i] == 0
        if done:
            free.put(i)

    def run(stage: Stage, inbox: queue.Queue) -> None:
        failed = False
        while isinstance(item := inbox.get(), tuple):
            i, n = item
            if not failed:
                try:
                    stage.write(memoryview(buffers[i])[:n])
                except BaseException as e:
                    failures.append(e)
                    failed = True
            release(i)
        if item == END and not failed:  # never on a source that failed: a stage's end may seal or probe what it saw
            try:
                stage.close()
            except BaseException as e:
                failures.append(e)

    threads = [threading.Thread(target=run, args=(s, q), name="stream-stage", daemon=True) for s, q in zip(stages, inboxes)]
    for t in threads:
        t.start()
    total, end = 0, ABORT
    try:
        while not failures:
            i = free.get()
            n = src.readinto(buffers[i])
            if not n:
                end = END
                break
            holders[i] = len(stages)  # no stage holds buffer i now: it came back through `free`
            for inbox in inboxes:
                inbox.put((i, n))
            total += n
            if progress is not None:
                progress(n)
    finally:
        for inbox in inboxes:
            inbox.put(end)
        for t in threads:
            t.join()
        for buffer in buffers:  # a start's buffers held a decrypted base
            zeroize(buffer)
    if failures:
        raise failures[0]
    return total


class Call:
    """A stage from a function of each buffer (and one to call at the end)."""

    def __init__(self, write: Callable[[memoryview], object], close: Callable[[], object] = lambda: None):
        self.write, self.close = write, close
