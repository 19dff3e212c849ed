"""One reply at a time, written on a worker thread and streamed into its view on the UI thread.

The order of a reply:
1. `start`: `ask(on_text, stop)` runs on a Textual worker thread (the model's decode loop).
2. Each piece the model writes is queued; the UI thread is told with a `TextPending` message only when
   the queue was empty, so the model never waits for the UI (its tok/s stays its own) and one draw
   takes every piece queued so far.
3. Once `ask` returns (or refuses with an `ApplianceError`, shown, never a crash), the UI thread draws
   what is still queued, closes the stream and hands the outcome to the screen's `done`.
`stop` asks the decode loop to end the reply early; `halt` does so and waits until the worker has returned.
"""

import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Optional

from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from ..errors import ApplianceError
from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..printable import printable
from ..runtime.divergence import Divergence
from ..runtime.session import Reply
from ..service import Outcome
from .widgets import ChatMessage

Ask = Callable[[Callable[[str], None], threading.Event], Outcome]
# The outcome, or None and the refusal's message.
Done = Callable[[Optional[Outcome], str], Awaitable[None]]


@dataclass(frozen=True)
class Drawing:
    """A reply's view being written: its Markdown stream, the pieces the UI has not drawn yet, the list it scrolls in."""

    stream: MarkdownStream
    pending: deque[str]
    messages: VerticalScroll


class TextPending(Message):
    """The worker wrote pieces of the reply into `drawing.pending`: the screen hands this to `ReplyWorker.draw`."""

    def __init__(self, drawing: Drawing):
        super().__init__()
        self.drawing = drawing


class ReplyWorker:
    """The reply being written for `screen` (at most one); the screen routes `TextPending` to `draw`."""

    def __init__(self, screen: Screen):
        self.screen = screen
        self.worker: Optional[Worker] = None
        self.stop_event: Optional[threading.Event] = None  # set with the worker, cleared with it

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, ask: Ask, view: ChatMessage, messages: VerticalScroll, done: Done) -> None:
        """`ask` writes into `view` (a reply's message, in `messages`); `done` runs on the UI thread once it returned."""
        self.stop_event = threading.Event()
        drawing = Drawing(Markdown.get_stream(view.body), deque(), messages)
        work = partial(self._generate, ask, drawing, self.stop_event, done)
        self.worker = self.screen.run_worker(work, name="reply", group="reply", thread=True, exit_on_error=False)

    def _generate(self, ask: Ask, drawing: Drawing, stop: threading.Event, done: Done) -> None:
        """On the worker thread."""

        def on_text(piece: str) -> None:  # never waits for the UI: tok/s stays the model's
            drawing.pending.append(piece)
            if len(drawing.pending) == 1:  # else a draw is already due and takes this piece too
                self.screen.post_message(TextPending(drawing))

        outcome: Optional[Outcome]
        try:
            outcome, error = ask(on_text, stop), ""
        except ApplianceError as e:  # context full, journal write refused, ...: shown, never a crash
            outcome, error = None, str(e)
        # Textual types the callback as `T | Awaitable[T]`, which mypy cannot solve for a coroutine function.
        self.screen.app.call_from_thread(self._finished, drawing, outcome, error, done)  # type: ignore[arg-type]

    async def draw(self, drawing: Drawing) -> None:
        """On the UI thread: every piece queued so far, escaped, appended to the reply's view."""
        parts = []
        while drawing.pending:
            parts.append(drawing.pending.popleft())
        if parts:  # the model's words may hold ESC and C1 controls, which Textual would pass to the terminal
            await drawing.stream.write(printable("".join(parts)))
            drawing.messages.scroll_end(animate=False)

    async def _finished(self, drawing: Drawing, outcome: Optional[Outcome], error: str, done: Done) -> None:
        await self.draw(drawing)  # whatever the queued draws have not taken yet
        await drawing.stream.stop()
        self.worker = self.stop_event = None
        await done(outcome, error)

    def stop(self) -> None:
        """Ask the reply being written (if any) to end after the current token."""
        if self.stop_event is not None:
            self.stop_event.set()

    async def halt(self) -> None:
        """Stop the reply being written (if any) and wait until its worker has returned."""
        if self.worker is None:
            return
        worker = self.worker
        self.stop()
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed):
            pass  # its own error path has already reported it


def reply_header(reply: Reply, divergence: Optional[Divergence], overlay_installed: bool, control_installed: bool) -> str:
    """A finished reply's header: the provenance facts it was made with, and its numbers."""
    facts = [
        f"overlay {'ON' if Overlay.KIND in reply.on else 'OFF'}" if overlay_installed else "overlay none",
        *([f"control {'ON' if ControlVector.KIND in reply.on else 'OFF'}"] if control_installed else []),
        f"{len(reply.tokens)} tok",
        f"{reply.tokens_per_second:.1f} tok/s",
    ]
    if reply.finish != "stop":
        facts.append("stopped" if reply.finish == "cancelled" else "cut at max tokens")
    if divergence is not None:
        facts.append(f"KL rmse {divergence.rmse:.3f} max {divergence.max:.3f}")
    return "assistant  " + "  ".join(facts)
