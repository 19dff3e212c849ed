"""The help screen: every key of every screen (from the one key table) and what the divergence meter costs."""

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from .keys import SECTIONS

# The reference figure was measured on the 2-core development machine, 128-token greedy replies,
# one llama.cpp thread, median of 3 (tests/ui/test_divergence.py prints this run's own figure).
AUDIT_COST = (
    "**Divergence meter (F3)**: while on, each reply made with the overlay ON also runs the base model "
    "on the same tokens in a second llama.cpp context and records KL(overlay || base) per position "
    "(rmse and max, in nats) in the message's provenance. The reply itself is unchanged. "
    "It costs one more forward pass per token: on the 2-core reference machine 55 -> 27 tok/s (0.49x). "
)


def help_markdown(live_cost: str) -> str:
    lines = ["# Keys", ""]
    for title, keys in SECTIONS:
        lines += [f"## {title}", "", "| key | does |", "|---|---|"]
        lines += [f"| `{k.key}` | {k.help} |" for k in keys]
        lines.append("")
    lines += ["## Divergence meter", "", AUDIT_COST + live_cost, ""]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1", "close", "Close")]

    def __init__(self, live_cost: str):
        super().__init__()
        self.live_cost = live_cost

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help"):
            yield Markdown(help_markdown(self.live_cost))

    def action_close(self) -> None:
        self.dismiss(None)
