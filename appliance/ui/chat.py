"""The chat screen: messages, the prompt, the status bar and the overlay's switch, and the small actions of
its keys. A reply is written on a worker thread and streamed in by reply_worker.py; the status bar shows
itself (widgets.py); the modal flows (system prompt, erase) are chat_modals.py's, the hand-offs to the
terminal (editor, clipboard) handoff.py's."""

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Optional

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from ..errors import ApplianceError
from ..journal.transcript import device_text
from .chat_modals import confirm_erase_journal, confirm_erase_overlay, pick_system_prompt
from .core import ChatCore, Outcome
from .divergence import Divergence
from .handoff import copy_code, copy_reply, edit_prompt_in_editor
from .keys import CHAT_KEYS, bindings
from .reply_worker import Ask, ReplyWorker, TextPending, reply_header
from .sessions import SessionsScreen
from .widgets import ChatMessage, PromptInput, StatusBar


class ChatScreen(Screen):
    KEYS = CHAT_KEYS
    BINDINGS = bindings(CHAT_KEYS)

    def __init__(self, core: ChatCore, export_dir: Path):
        super().__init__()
        self.core, self.export_dir = core, export_dir  # export_dir: where F4's exports go
        self.replies = ReplyWorker(self)  # the reply being written, if any
        self.editing = False  # the next send replaces the last exchange (edit and resend)
        self.last_exchange: Optional[tuple[ChatMessage, ChatMessage]] = None  # the views of the last whole exchange
        self.code_blocks_copied = 0  # code blocks of the last reply copied so far (ctrl+g walks back through them)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield VerticalScroll(id="messages")
        yield PromptInput(id="prompt", placeholder="Message (enter sends, ctrl+j new line, F1 help)")
        yield Footer()

    def on_mount(self) -> None:
        snapshot = self.core.status()
        status = self.query_one(StatusBar)
        status.base, status.window = f"{snapshot.base_name} {snapshot.base_sha256[:8]}", self.core.window
        runtime = self.core.runtime
        status.device = device_text(runtime.settings.device(runtime.engine.n_layer))
        self.refresh_status()
        if snapshot.overlay_problem:
            self.notify(f"overlay not loaded: {snapshot.overlay_problem}", severity="error", timeout=15)
        if snapshot.control_problem:
            self.notify(f"control vector not loaded: {snapshot.control_problem}", severity="error", timeout=15)
        self.query_one(PromptInput).focus()
        if self.core.session is not None and self.core.session.history:  # resumed at unlock (`chat --resume`)
            self.call_later(self._show_history)
        notices, self.core.notices = self.core.notices, []
        for notice in notices:
            self.notify(notice, severity="warning", timeout=15)

    def refresh_status(self) -> None:
        self.query_one(StatusBar).show(self.core.status(), audit=self.core.audit.enabled)

    def refresh_context(self, used: Optional[int]) -> None:
        """The context meter after a reply (`used`: its prompt and reply tokens; None: no reply yet)."""
        self.query_one(StatusBar).show_context(used, self.core.dropped_exchanges())

    # -- messages -------------------------------------------------------------------

    async def add_message(self, role: str, text: str = "", header: str = "") -> ChatMessage:
        view = ChatMessage(role, text, header)
        messages = self.query_one("#messages", VerticalScroll)
        await messages.mount(view)
        messages.scroll_end(animate=False)
        return view

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.replies.busy:
            self.query_one(PromptInput).text = event.text  # kept for when the reply is done
            self.notify("a reply is still being written: escape stops it", severity="warning")
            return
        ask: Ask = partial(self.core.reply, event.text)
        if self.editing:
            self.editing = False
            ask = partial(self.core.edit, event.text)
            if self.last_exchange is not None:
                for old in self.last_exchange:
                    await old.remove()
        user = await self.add_message("user", event.text)
        await self._ask(ask, user)

    async def _show_history(self) -> None:
        """The views of a resumed session's history; its last exchange can be regenerated or edited."""
        messages = self.query_one("#messages", VerticalScroll)
        await messages.remove_children()
        views = []
        history = self.core.session.history if self.core.session is not None else []
        for turn in history:
            role = turn["role"]
            views.append(await self.add_message(role, turn["content"], header="" if role == "user" else "assistant  (resumed)"))
        self.last_exchange = (views[-2], views[-1]) if len(views) >= 2 else None
        self.code_blocks_copied = 0

    async def _ask(self, ask: Ask, user: ChatMessage) -> None:
        """A new reply view under `user`, written by `ask(on_text, stop)` on the worker thread."""
        self.last_exchange = None
        snapshot = self.core.status()
        state = "ON" if snapshot.overlay_on else "OFF" if snapshot.overlay else "none"
        view = await self.add_message("assistant", header=f"assistant  overlay {state}")
        self.query_one(StatusBar).busy = True
        self.replies.start(ask, view, self.query_one("#messages", VerticalScroll), partial(self._answered, user, view))

    @on(TextPending)
    async def _draw_pending(self, event: TextPending) -> None:
        await self.replies.draw(event.drawing)

    async def _answered(self, user: ChatMessage, view: ChatMessage, outcome: Optional[Outcome], error: str) -> None:
        """The reply is written (or refused): its header, the status bar's numbers, and the exchange made the last."""
        status = self.query_one(StatusBar)
        status.busy = False
        if outcome is None:
            view.header.update(f"assistant  error: {error}")
            self.notify(error, severity="error", timeout=10)
            return
        self.last_exchange, self.code_blocks_copied = (user, view), 0
        # The meter's measure (None: it was off); the service types it loosely, as the meter is the UI's.
        reply, div = outcome.reply, outcome.divergence if isinstance(outcome.divergence, Divergence) else None
        snapshot = self.core.status()
        view.header.update(reply_header(reply, div, snapshot.overlay is not None, snapshot.control is not None))
        status.tokens_per_second = reply.tokens_per_second
        self.refresh_context(reply.prompt_tokens + len(reply.tokens))
        if div is not None:
            status.divergence = div
        if reply.dropped_turns:
            self.notify(f"{reply.dropped_turns} oldest exchanges left out to fit the context window", severity="warning")

    # -- actions -----------------------------------------------------------------------

    def action_stop(self) -> None:
        self.replies.stop()

    def action_toggle_overlay(self) -> None:
        snapshot = self.core.status()
        loaded, problem = snapshot.overlay is not None, snapshot.overlay_problem
        self._switch("overlay", loaded, problem or "no overlay is loaded", bool(problem), self.core.toggle)

    def action_toggle_control(self) -> None:
        snapshot = self.core.status()
        loaded, problem = snapshot.control is not None, snapshot.control_problem
        self._switch(
            "control vector", loaded, problem or "no control vector is installed", bool(problem), self.core.toggle_control
        )

    def _switch(self, what: str, loaded: bool, why_not: str, refused: bool, toggle: Callable[[], bool]) -> None:
        """F2 and ctrl+t: flip the overlay or the control vector from the next reply (journalled by the core)."""
        if not loaded:  # none installed, or refused at unlock (e.g. bound to another base): say why, switch nothing
            self.notify(why_not, severity="error" if refused else "warning")
            return
        if self.replies.busy:  # the reply under way keeps the state it started in; its provenance says which
            self.notify("a reply is being written: escape stops it, then switch", severity="warning")
            return
        try:
            on = toggle()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        self.refresh_status()
        self.notify(f"{what} {'ON' if on else 'OFF'} from the next reply")

    def action_toggle_audit(self) -> None:
        self.core.set_audit(not self.core.audit.enabled)
        self.refresh_status()

    async def action_new_session(self) -> None:
        await self.replies.halt()
        try:
            self.core.new_session()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        await self.query_one("#messages", VerticalScroll).remove_children()
        self.last_exchange, self.editing, self.code_blocks_copied = None, False, 0
        self.query_one(StatusBar).divergence = None
        self.refresh_context(None)
        self.refresh_status()

    async def action_regenerate(self) -> None:
        last = self._exchange_to_take_back("regenerate")
        if last is None:
            return
        user, old = last
        self.editing = False  # an edit under way would take back the new exchange instead
        await old.remove()
        await self._ask(self.core.regenerate, user)

    def action_edit_last(self) -> None:
        prompt = self.query_one(PromptInput)
        if self.editing:
            self.editing = False
            prompt.clear()
            self.notify("edit cancelled: the last exchange stays")
            return
        if self._exchange_to_take_back("edit") is None:
            return
        self.editing = True
        prompt.text = self.core.last_prompt()
        prompt.move_cursor(prompt.document.end)
        prompt.focus()
        self.notify("editing the last prompt: enter sends it in place of the last exchange (which stays in the journal)")

    def _exchange_to_take_back(self, what: str) -> Optional[tuple[ChatMessage, ChatMessage]]:
        """The views of the last exchange, if it can be taken back now; else None, and the reason shown."""
        if self.replies.busy:
            self.notify(f"a reply is being written: escape stops it, then {what}", severity="warning")
            return None
        if self.last_exchange is None or not self.core.can_take_back():
            self.notify(f"no reply to {what} yet", severity="warning")
            return None
        return self.last_exchange

    def action_copy_reply(self) -> None:
        copy_reply(self)

    def action_copy_code(self) -> None:
        copy_code(self)

    def action_external_editor(self) -> None:
        edit_prompt_in_editor(self)

    def action_sessions(self) -> None:
        self.app.push_screen(SessionsScreen(self.core, self.export_dir, self.resume_session))

    async def resume_session(self, session_id: str) -> None:
        """F4's resume: the past session's history on screen, the chat continuing it in a new journal session."""
        await self.replies.halt()
        try:
            resumed = self.core.resume(session_id)
        except ApplianceError as e:  # nothing changed: the chat goes on where it was
            self.notify(f"cannot resume {session_id}: {e}", severity="error", timeout=10)
            return
        self.editing = False
        await self._show_history()
        self.query_one(StatusBar).divergence = None
        self.refresh_context(None)
        self.refresh_status()
        self.notify(f"resumed {session_id}: {len(resumed.past.history)} messages")
        for notice in resumed.notices:
            self.notify(notice, severity="warning", timeout=15)

    def action_system_prompt(self) -> None:
        pick_system_prompt(self)

    def action_erase_overlay(self) -> None:
        confirm_erase_overlay(self)

    def action_erase_journal(self) -> None:
        confirm_erase_journal(self)
