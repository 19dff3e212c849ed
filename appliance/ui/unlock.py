"""The unlock screen: the way back in after a kill, and the unlock (or a new vault's passphrase, typed
twice) where `appliance chat` had no passphrase source to open the vault before the UI.

Every refusal of the vault (wrong passphrase, damaged file, erased vault, a second appliance
running) is shown as a message and the screen stays; nothing here can crash the UI.
"""

from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label

from ..errors import ApplianceError
from .core import ChatCore
from .widgets import PlainLabel


class UnlockScreen(Screen):
    def __init__(self, core: ChatCore, on_unlocked: Callable[[], None], message: str = ""):
        super().__init__()
        self.core, self.message = core, message
        self._on_unlocked = on_unlocked  # the app's next screen, once the vault is open
        self.creating = core.vault_state() != "present"

    def compose(self) -> ComposeResult:
        model = self.core.model
        with Vertical(classes="dialog", id="unlock"):
            yield Label("appliance: locked", id="title")
            yield PlainLabel(f"base {model.name} v{model.version} sha256 {model.sha256[:16]} (verified)")
            if self.creating:
                why = "The vault was crypto-erased." if self.core.vault_state() == "erased" else "No vault yet."
                yield Label(f"{why} Choose a passphrase to create it (typed twice).", markup=False)
                yield Input(password=True, placeholder="new passphrase", id="passphrase")
                yield Input(password=True, placeholder="the same again", id="again")
            else:
                yield Label("Passphrase:")
                yield Input(password=True, placeholder="passphrase", id="passphrase")
            yield PlainLabel(self.message, id="message")  # a refusal quotes files and paths
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#passphrase", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not self.creating:
            self._open(lambda: self.core.unlock(event.value.encode()))
        elif event.input.id == "passphrase":
            self.query_one("#again", Input).focus()
        else:
            first = self.query_one("#passphrase", Input).value
            if first != event.value:
                self._fail("the two passphrases differ: type them again")
            else:
                self._open(lambda: self.core.create_vault(first.encode()))

    def _open(self, how) -> None:
        try:
            how()
        except ApplianceError as e:
            self._fail(str(e))
            return
        self._on_unlocked()

    def _fail(self, text: str) -> None:
        self.query_one("#message", PlainLabel).update(text)
        for field in self.query(Input):
            field.clear()
        self.query_one("#passphrase", Input).focus()
