"""The loading screen: the base verified (an imported one decrypted) and loaded into llama.cpp, shown as it goes.

`appliance chat` starts the UI first and loads on a worker thread, so a multi-GB base is a moving bar,
not a frozen terminal. The worker reports through `progress.Steps` (`Loading` below): it only writes
the step's label and byte counts, and a timer on the UI thread shows them, so the loop that hashes a
base never waits on the screen. A load that fails (a base refused, exit 3) ends the app with that
error, which `appliance chat` raises as its own; so does a kill that arrives while loading.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Label, ProgressBar

from ..progress import Advance, Steps
from .core import ChatCore
from .widgets import PlainLabel

Load = Callable[[Steps], ChatCore]  # builds the core (base verified, llama.cpp loaded), reporting its steps
REFRESH_SECONDS = 0.1


class Loading:
    """`Steps` for a worker thread: the current step's label, total and bytes done, read by the screen's timer."""

    def __init__(self) -> None:
        self.label, self.done = "starting", 0
        self.total: Optional[int] = None
        self._lock = threading.Lock()

    @contextmanager
    def step(self, label: str, total: Optional[int]) -> Iterator[Advance]:
        with self._lock:
            self.label, self.total, self.done = label, total, 0
        yield self._advance

    def _advance(self, n: int) -> None:
        self.done += n  # one writer (the worker): a reader sees some recent count, which is all a bar needs

    def shown(self) -> tuple[str, Optional[int], int]:
        with self._lock:
            return self.label, self.total, self.done


class LoadingScreen(Screen):
    def __init__(self, load: Load, on_loaded: Callable[[ChatCore], None], on_failed: Callable[[BaseException], None]):
        super().__init__()
        self.steps = Loading()
        self._load, self._on_loaded, self._on_failed = load, on_loaded, on_failed

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="loading"):
            yield Label("appliance: loading the base", id="title")
            yield PlainLabel("", id="step")  # names a base from the store: shown as plain text
            yield ProgressBar(total=None, show_eta=True, id="bar")

    def on_mount(self) -> None:
        self.set_interval(REFRESH_SECONDS, self._refresh)
        self._run()

    def _refresh(self) -> None:
        label, total, done = self.steps.shown()
        mb = f"  {done / 1e6:,.0f} of {total / 1e6:,.0f} MB" if total else ""
        self.query_one("#step", PlainLabel).update(f"{label}{mb}")
        self.query_one("#bar", ProgressBar).update(total=total, progress=done)

    @work(thread=True, exit_on_error=False)
    def _run(self) -> None:
        try:
            core = self._load(self.steps)
        except BaseException as e:  # raised again by `appliance chat` once the app has ended
            self.app.call_from_thread(self._on_failed, e)
            return
        self.app.call_from_thread(self._on_loaded, core)
