"""The application: (loading ->) (unlock ->) chat (-> sessions, help, modals); the kill key reaches every screen.

The kill-switch's signal handler (`appliance kill` from another terminal) only sets an Event; a
20 ms timer here notices it and runs the same kill as the key, so an external kill also stops the
reply, writes the `kill` record and locks the UI.
"""

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Optional, Union

from textual.app import App, SystemCommand
from textual.screen import Screen

from ..errors import ApplianceError
from ..printable import printable
from .chat import ChatScreen
from .core import ChatCore
from .help import HelpScreen
from .keys import APP_KEYS, Key, bindings
from .loading import Load, LoadingScreen
from .unlock import UnlockScreen

KILL_POLL_SECONDS = 0.02


class ApplianceApp(App):
    CSS_PATH = "appliance.tcss"
    TITLE = "appliance"
    BINDINGS = bindings(APP_KEYS)

    def __init__(self, core: Union[ChatCore, Load], *, export_dir: Optional[Path] = None):
        """`core`, or how to make it (`appliance chat` loads the base behind a loading screen)."""
        super().__init__()
        self._load = None if isinstance(core, ChatCore) else core
        self.core: Optional[ChatCore] = core if isinstance(core, ChatCore) else None
        self.export_dir = export_dir or Path.cwd()
        self.chat: Optional[ChatScreen] = None
        self._killing = False
        self.load_error: Optional[BaseException] = None  # why loading failed: `appliance chat` raises it

    def on_mount(self) -> None:
        if self._load is not None:
            self.push_screen(LoadingScreen(self._load, self._loaded, self._load_failed))
        else:
            self._first_screen(self.push_screen)
        self.set_interval(KILL_POLL_SECONDS, self._poll_kill)

    def _loaded(self, core: ChatCore) -> None:
        self.core = core
        self._first_screen(self.switch_screen)

    def _load_failed(self, error: BaseException) -> None:
        self.load_error = error
        self.exit()

    def _first_screen(self, show) -> None:
        # `appliance chat` unlocks at the shell and hands over an unlocked core; a locked one asks here
        core = self._core()
        show(self._chat() if core.unlocked else UnlockScreen(core, self.unlocked))

    def _core(self) -> ChatCore:
        if self.core is None:
            raise RuntimeError("the chat core is still loading")
        return self.core

    def unlocked(self) -> None:
        self.switch_screen(self._chat())

    def _chat(self) -> ChatScreen:
        self.chat = ChatScreen(self._core(), self.export_dir)
        return self.chat

    async def _poll_kill(self) -> None:
        if self.core is not None and self.core.kill_requested() and not self._killing:
            await self.action_kill()

    async def action_kill(self) -> None:
        """No confirmation: stop the reply, then the core switches the overlay off, journals `kill`, zeroes, locks."""
        if self.core is None or not self.core.unlocked or self._killing:
            return  # a kill while loading ends the load (`loading.py`)
        self._killing = True
        message = (
            "Killed: reply stopped, overlay off and zeroed, keys zeroed, `kill` journalled. Type the passphrase to come back."
        )
        try:
            if self.chat is not None:  # always, once unlocked; the reply it may be writing stops first
                await self.chat.replies.halt()
            self.core.kill()  # locks even when it raises
        except ApplianceError as e:
            message = f"Killed and locked, but: {e}"
        finally:
            self._killing = False
        await self._lock_ui(message)

    async def _lock_ui(self, message: str) -> None:
        while len(self.screen_stack) > 2:  # modals, help, sessions above the chat
            await self.pop_screen()
        self.chat = None
        await self.switch_screen(UnlockScreen(self._core(), self.unlocked, message=message))

    def notify(self, message: str, *, markup: bool = False, **kwargs) -> None:
        """Every notification (screens and widgets call this one) is escaped plain text: error messages
        quote names, paths and replies from outside, which must neither reach the terminal raw nor be
        read as markup."""
        super().notify(printable(message), markup=False, **kwargs)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.core.audit_cost() if self.core else ""))

    async def action_quit(self) -> None:
        if self.chat is not None:
            await self.chat.replies.halt()
        if self.core is not None:
            self.core.lock()
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette lists exactly the key table's commands for this screen, each with its key."""
        keyed: list[tuple[App | Screen, Key]] = [(self, k) for k in APP_KEYS if not k.builtin]
        keyed += [(screen, k) for k in getattr(screen, "KEYS", ()) if not k.builtin]
        for target, k in keyed:
            yield SystemCommand(f"{k.title} [{k.key}]", k.help, partial(target.run_action, k.action))
