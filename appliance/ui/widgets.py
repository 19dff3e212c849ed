"""The chat's widgets: the status bar, the prompt box with history, one message in the list, a plain label.

Text from outside (replies, prompts, names and signers from the store, error messages) is shown
through these widgets escaped (`appliance.printable`) and never read as markup: Textual passes ESC
and C1 controls through to the terminal as they are, and Rich markup in a string would style it,
make links, or fail to parse and stop the app.
"""

from typing import Optional

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.visual import VisualType
from textual.widget import Widget
from textual.widgets import Label, Markdown, Static, TextArea

from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..printable import printable
from ..runtime.divergence import Divergence
from ..service import Snapshot


class StatusBar(Widget):
    """Always on screen: which base and which overlay make the words, the journal session, the last reply's numbers.

    The context meter is the last reply's prompt and reply tokens over the window; once the oldest
    exchanges no longer fit (the window policy in runtime/session.py), it says how many are left out.
    """

    base = reactive("")
    overlay = reactive("none")  # name, version and signers, or why there is none
    overlay_on: reactive[Optional[bool]] = reactive(None)  # None: no overlay loaded
    control = reactive("")  # the control vector's name, version and strength, or why it was refused; "": none installed
    control_on: reactive[Optional[bool]] = reactive(None)  # None: no control vector loaded
    session = reactive("")
    tokens_per_second: reactive[Optional[float]] = reactive(None)
    audit = reactive(False)
    divergence: reactive[Optional[Divergence]] = reactive(None)
    busy = reactive(False)
    window = reactive(0)  # the context window (tokens) of the engine
    device = reactive("cpu")  # what computes the replies (`device_text`); shown only when it is a card
    context_used: reactive[Optional[int]] = reactive(None)  # prompt + reply tokens of the last reply
    dropped = reactive(0)  # oldest exchanges left out of what the model sees
    demo_signers = reactive(False)  # demo signers pinned: said on a line of its own, never passed for production trust

    def show(self, snapshot: Snapshot, *, audit: bool) -> None:
        """The appliance's state as `snapshot` has it."""
        overlay, control = snapshot.item(Overlay.KIND), snapshot.item(ControlVector.KIND)
        p = overlay.loaded
        if p is None:
            self.overlay = "refused (see message)" if overlay.problem else "none installed"
            self.overlay_on = None
        else:
            demo = " [DEMO KEYS]" if p.demo_signers else ""  # never let a demo pass for production trust
            self.overlay = f"{p.name} v{p.version} signers {' '.join(s[:8] for s in p.signers)}{demo}"
            self.overlay_on = overlay.on
        c = control.loaded
        if c is None:
            self.control, self.control_on = ("refused (see message)" if control.problem else ""), None
        else:
            demo = " [DEMO KEYS]" if c.demo_signers else ""
            self.control = f"{c.name} v{c.version} strength {control.fields['strength']:.3g}{demo}"
            self.control_on = control.on
        self.session = snapshot.session_id or ""
        self.audit = audit
        self.demo_signers = snapshot.demo_signers_pinned

    def show_context(self, used: Optional[int], dropped: int) -> None:
        """The context meter: tokens in the window after a reply (None: no reply yet), and how many exchanges no longer fit."""
        self.context_used, self.dropped = used, dropped

    def render(self) -> Text:
        # Three short lines, the overlay's state first: at 80 columns nothing wraps.
        line = Text.assemble(("overlay ", "dim"))
        if self.overlay_on is not None:
            line.append(
                " ON " if self.overlay_on else " OFF ", style="bold reverse green" if self.overlay_on else "bold reverse red"
            )
            line.append(" ")
        line.append(printable(self.overlay))  # signers come from the store's accepted records
        if self.control:  # a line of its own, only where a control vector is installed: 80 columns hold no more
            line.append_text(Text.assemble("\n", ("control ", "dim")))
            if self.control_on is not None:
                on = self.control_on
                line.append(" ON " if on else " OFF ", style="bold reverse green" if on else "bold reverse red")
                line.append(" ")
            line.append(printable(self.control))
        if self.demo_signers:
            line.append_text(Text.assemble("\n", ("trust ", "dim"), (" demo signers pinned ", "bold reverse yellow"),
                                           " only the demo items (trust remove-demo)"))  # fmt: skip
        line.append_text(
            Text.assemble(
                "\n", ("base ", "dim"), printable(self.base), ("  journal ", "dim"), printable(self.session or "-"), "\n"
            )
        )
        line.append(f"{self.tokens_per_second:.1f} tok/s" if self.tokens_per_second is not None else "- tok/s")
        line.append("  ctx ", style="dim")
        line.append(f"{'-' if self.context_used is None else self.context_used}/{self.window}")
        if self.device != "cpu":  # the CPU is the default; the bar says when a card computes the words
            line.append("  on ", style="dim")
            line.append(printable(self.device))
        if self.dropped:
            line.append(f" {self.dropped} oldest dropped", style="bold reverse yellow")
        line.append("  KL ", style="dim")
        if not self.audit:
            line.append("meter off (F3)", style="dim")
        elif self.divergence is None:
            line.append("meter on, no overlay-ON reply yet")
        else:
            line.append(f"rmse {self.divergence.rmse:.3f} max {self.divergence.max:.3f}", style="bold")
        if self.busy:
            line.append("  writing... (esc stops)", style="italic")
        return line


class PromptInput(TextArea):
    """Multi-line prompt: enter sends, ctrl+j adds a line, up/down on the first/last line walk the prompts sent before."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)
        self.sent: list[str] = []
        self._recalled: Optional[int] = None  # index into history while walking it

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":  # a TextArea would insert a newline; here enter is "send"
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.sent.append(self.text)
                self._recalled = None
                self.post_message(self.Submitted(self.text))
                self.clear()
            return
        if event.key == "ctrl+j":
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def action_cursor_up(self, select: bool = False) -> None:
        if select or self.cursor_location[0] > 0 or not self.sent:
            return super().action_cursor_up(select)
        self._recall(len(self.sent) - 1 if self._recalled is None else max(0, self._recalled - 1))

    def action_cursor_down(self, select: bool = False) -> None:
        if select or self.cursor_location[0] < self.document.line_count - 1 or self._recalled is None:
            return super().action_cursor_down(select)
        if self._recalled + 1 < len(self.sent):
            self._recall(self._recalled + 1)
        else:  # past the newest: back to an empty prompt
            self._recalled = None
            self.clear()

    def _recall(self, index: int) -> None:
        self._recalled = index
        self.text = self.sent[index]
        self.move_cursor(self.document.end)


class PlainLabel(Label):
    """A label for text that may come from outside: shown escaped, never read as markup."""

    def __init__(self, text: str = "", **kwargs):
        super().__init__(printable(text), markup=False, **kwargs)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        """Text is escaped; a visual made in code (never parsed as markup) is shown as it is."""
        super().update(printable(content) if isinstance(content, str) else content, layout=layout)


class ChatMessage(Vertical):
    """One message: a one-line header (who, and for a reply its provenance facts), then the text."""

    def __init__(self, role: str, text: str = "", header: str = ""):
        super().__init__(classes=role)
        self.role, self._text = role, text
        self.header = PlainLabel(header or ("you" if role == "user" else "assistant"), classes="header")

    def compose(self) -> ComposeResult:
        yield self.header
        # Replies are Markdown (streamed in, escaped piece by piece by the chat screen); the user's own
        # words are shown verbatim. A link in a reply is text: nothing is opened from a model's words.
        if self.role == "assistant":
            yield Markdown(printable(self._text), open_links=False)
        else:
            yield Static(printable(self._text), markup=False)

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)
