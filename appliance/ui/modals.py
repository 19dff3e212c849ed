"""Modal dialogs: typed confirmation of a crypto-erase, the per-session system prompt editor, the preset picker."""

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option, OptionDoesNotExist

from ..presets import Preset
from ..printable import printable
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


class PresetScreen(ModalScreen[Optional[tuple[str, Optional[str]]]]):
    """F6: the system prompt from a preset, the model's default, or written by hand.

    Dismissed with ("preset", NAME), ("default", None), ("write", None), or None on cancel.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, presets: list[Preset], current: str, selected: str = "default"):
        """`current`: what conditions the session now, in words; `selected`: the option id that stands for it."""
        super().__init__()
        self.presets, self.current, self.selected = presets, current, selected

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("System prompt: enter picks, escape cancels")
            yield PlainLabel(f"now: {self.current}", id="current")
            options = [
                Option(Text("the model's default (no system prompt)"), id="default"),
                Option(Text("write one for this session..."), id="write"),
            ]
            options += [
                Option(Text(printable(f"preset {p.name}: {_first_line(p.text)}")), id=f"preset:{p.name}") for p in self.presets
            ]
            yield OptionList(*options, id="presets")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        try:
            options.highlighted = options.get_option_index(self.selected)
        except OptionDoesNotExist:  # the session's preset was removed meanwhile
            options.highlighted = 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        kind, _, name = (event.option.id or "").partition(":")
        self.dismiss((kind, name or None))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _first_line(text: str, width: int = 48) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:width] + ("..." if len(line) > width or "\n" in text.strip() else "")
