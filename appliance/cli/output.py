"""The CLI's only way to the terminal: every line (and every streamed piece) is escaped on its way out.

One choke point rather than an escape at each place that prints outside text: a command cannot
forget it, and tests/test_terminal_injection.py holds that nothing else in the CLI writes output.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import click

from ..printable import printable
from ..progress import Advance, ignore


def say(text: str = "") -> None:
    """One line on stdout."""
    click.echo(printable(text))


def warn(text: str) -> None:
    """One line on stderr: notes, warnings, progress, the `error:` line."""
    click.echo(printable(text), err=True)


def stream(piece: str) -> None:
    """A piece of a reply as it is generated, shown at once (escaping is per character: pieces compose)."""
    sys.stdout.write(printable(piece))
    sys.stdout.flush()


LARGE = 128 << 20  # long work (import, verify, bundle create) shows steps over this many bytes (the embedded 98 MB: no)
LARGE_START = 256 << 20  # a start (ask, chat, serve) shows the base's verification over this many


class Shown:
    """The CLI's renderer of `progress.Steps`, on stderr, for steps of at least `min_total` bytes (or of unknown size).

    On a terminal: a rich bar with bytes done, MB/s and time left, one line per step, left on screen when
    done. Otherwise (a pipe, a log): `label: 10%`, `label: 20%`, ... lines, which a log keeps readably.
    """

    def __init__(self, min_total: int = LARGE):
        self.min_total = min_total
        self.terminal = sys.stderr.isatty()

    @contextmanager
    def step(self, label: str, total: Optional[int]) -> Iterator[Advance]:
        label = printable(label)
        if total is not None and total < self.min_total:
            yield ignore
        elif self.terminal:
            with _bar(label, total) as advance:
                yield advance
        else:
            yield _TenPercent(label, total)


@contextmanager
def _bar(label: str, total: Optional[int]) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = [TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
        if total is not None:
            bar.update(task, completed=total)  # done is 100 % (a bundle's tar headers are never counted)


class _TenPercent:
    """Percent in 10 % steps; a step of unknown size says only that it started."""

    def __init__(self, label: str, total: Optional[int]):
        self.label, self.total, self.done, self.shown = label, total, 0, 0
        if total is None:
            warn(f"{label} ...")

    def __call__(self, n: int) -> None:
        self.done += n
        pct = 100 * self.done // max(self.total or 0, 1)
        if self.total is not None and pct >= self.shown + 10:
            self.shown = pct - pct % 10
            warn(f"{self.label}: {self.shown}%")
