"""Modal dialogs: typed confirmation of a crypto-erase, and the per-session system prompt editor."""

from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, TextArea

from .widgets import PlainLabel


class EraseScreen(ModalScreen[bool]):
    """Dismissed with True only once `phrase` is typed exactly; a wrong phrase erases nothing and says so."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, phrase: str, what: str):
        super().__init__()
        self.phrase, self.what = phrase, what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield PlainLabel(f"Crypto-erase {self.what}. It cannot be undone.")
            yield PlainLabel(f'Type "{self.phrase}" and press enter (escape cancels):')
            yield Input(id="confirm")
            yield PlainLabel("", id="message")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.phrase:
            self.dismiss(True)
            return
        self.query_one("#message", PlainLabel).update("confirmation did not match: nothing was erased")
        event.input.clear()

    def action_cancel(self) -> None:
        self.dismiss(False)


class SystemPromptScreen(ModalScreen[Optional[str]]):
    """Edit the session's system prompt; empty means the model's own default. Dismissed with None on cancel."""

    BINDINGS = [Binding("ctrl+s", "save", "Save"), Binding("escape", "cancel", "Cancel")]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("System prompt for this session (ctrl+s saves, escape cancels; empty: the model's default)")
            yield TextArea(self.text, id="system", soft_wrap=True)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)
