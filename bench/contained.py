"""Each measurement of the bench in a child process of its own: its rows, or one row that says why it failed.

A measurement can fail in Python (an exception) or below it, where llama.cpp ends the whole process
with a signal (its weight repacking for AMX is a SIGSEGV on a kernel that does not grant the tile
state). Only another process survives the second kind, so every measurement runs in one, spawned
rather than forked (nothing of the parent's threads or llama.cpp state is copied into it), and the
run goes on with the next: a failure costs its own rows, never the ones measured before it.
"""

import multiprocessing
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

Row = tuple[str, str, str, str]  # measure, value, ratio, target
FAILED = "FAILED"
MAX_REASON = 160  # characters of the reason in the table; the child's traceback is on stderr


def _child(send, measure: Callable[[], list[Row]]) -> None:
    try:
        rows = measure()
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the parent reports them as a failure
        traceback.print_exc()
        send.send(("error", f"{type(e).__name__}: {e}"))
    else:
        send.send(("rows", rows))


def contained(title: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """`measure()`'s rows, run in a child process; if it raised or died, one row: `title`, FAILED and why.

    `measure` is pickled into the child: a module-level function, or a `functools.partial` of one.
    """
    spawn = multiprocessing.get_context("spawn")
    receive, send = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_child, args=(send, measure), daemon=True)
    child.start()
    send.close()  # the child holds the only writer: its death ends the pipe
    try:
        kind, value = receive.recv()
    except EOFError:
        kind, value = "died", ""
    child.join()
    if kind == "rows":
        return value
    if kind == "died":
        code = child.exitcode or 0
        value = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code} before any result"
    reason = " ".join(value.split())  # one line
    reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
    return [(f"{title}: {reason}", FAILED, "", "")]


def measure_all(planned: Sequence[tuple[str, Callable[[], list[Row]]]]) -> list[Row]:
    """Every planned measurement in turn, each contained; what is being measured, and its rows, said on stderr as it goes."""
    rows: list[Row] = []
    for n, (title, measure) in enumerate(planned, 1):
        print(f"[{n}/{len(planned)}] {title} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        got = contained(title, measure)
        for name, value, ratio, _ in got:
            print(f"      {name}: {value}" + (f" (ratio {ratio})" if ratio else ""), file=sys.stderr, flush=True)
        print(f"      ({time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)
        rows += got
    return rows
