"""Progress of long work over large artifacts: what the library layers report and a front end shows.

Long work comes in steps ("verify base X v2", 4.3 GB); a step's work reports the bytes it has just
passed through the byte callback `trust.hashing.Progress` already takes, so the hashing and copy
loops need nothing more. The library opens a step where it knows what the bytes are and how many;
the CLI renders steps (a bar on a terminal, 10 % lines otherwise: `cli/output.py`), the chat a
progress bar on its loading screen (`ui/loading.py`), and tests record them.

A step of unknown size (total None) shows its label only: llama.cpp loading a base reports no bytes.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Optional, Protocol

Advance = Callable[[int], None]  # called with the number of bytes just processed


class Steps(Protocol):
    """Where a long job reports: `with steps.step(label, total) as advance: ... advance(n) ...`."""

    def step(self, label: str, total: Optional[int]) -> AbstractContextManager[Advance]: ...


class Silent:
    """Reports go nowhere: the default of every library function that takes `Steps`."""

    @contextmanager
    def step(self, label: str, total: Optional[int]) -> Iterator[Advance]:
        yield ignore


def ignore(n: int) -> None:
    """The byte callback of a step nobody shows."""


SILENT = Silent()
