"""The chat screen: messages, the prompt, the status bar and the switches, and the actions of its keys.

A reply is written on a worker thread and streamed in by reply_worker.py; the status bar shows itself
(widgets.py). The screen owns the last exchange on screen (`LastExchange`: what regenerate, edit, and the
clipboard keys act on); its modal flows (system prompt, erase) are worker actions that await their dialog
(modals.py); the hand-off of the prompt to `$EDITOR` is handoff.py's.

The clipboard is written by OSC 52 because an isolated machine has no clipboard daemon: the terminal itself
takes the text. What is copied is the text as shown, escaped (`printable`): raw control characters pasted
into a shell could run commands (a bracketed-paste end sequence in a reply would end the paste early).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from ..erase import ERASE_JOURNAL_PHRASE
from ..errors import ApplianceError
from ..journal.transcript import device_text
from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..overlay.loadable import BY_KIND
from ..presets import every
from ..printable import printable
from .code_blocks import code_blocks
from .core import ChatCore, Outcome
from .external_editor import EditorFailed
from .handoff import edit_in_editor
from .keys import CHAT_KEYS, bindings
from .modals import EraseScreen, PresetScreen, SystemPromptScreen
from .reply_worker import Ask, ReplyWorker, TextPending, reply_header
from .sessions import SessionsScreen
from .widgets import ChatMessage, PromptInput, StatusBar


@dataclass
class LastExchange:
    """The views of the last whole exchange on screen, and how far ctrl+g has walked back through its reply's
    code blocks."""

    user: ChatMessage
    reply: ChatMessage
    code_blocks_copied: int = 0

    def next_code_block(self, blocks: list[str]) -> int:
        """The index of the block to copy now: the last block first, then each press the one before."""
        n = len(blocks) - 1 - self.code_blocks_copied % len(blocks)
        self.code_blocks_copied += 1
        return n


class ChatScreen(Screen):
    KEYS = CHAT_KEYS
    BINDINGS = bindings(CHAT_KEYS)

    def __init__(self, core: ChatCore, export_dir: Path):
        super().__init__()
        self.core, self.export_dir = core, export_dir  # export_dir: where F4's exports go
        self.replies = ReplyWorker(self)  # the reply being written, if any
        self.editing = False  # the next send replaces the last exchange (edit and resend)
        self.last_exchange: Optional[LastExchange] = None

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield VerticalScroll(id="messages")
        yield PromptInput(id="prompt", placeholder="Message (enter sends, ctrl+j new line, F1 help)")
        yield Footer()

    def on_mount(self) -> None:
        snapshot = self.core.status()
        status = self.query_one(StatusBar)
        status.base, status.window = f"{snapshot.base_name} {snapshot.base_sha256[:8]}", self.core.runtime.engine.n_ctx
        runtime = self.core.runtime
        status.device = device_text(runtime.settings.device(runtime.engine.n_layer))
        self.refresh_status()
        for item in snapshot.items:
            if item.problem:
                self.notify(f"{BY_KIND[item.kind].NOUN} not loaded: {item.problem}", severity="error", timeout=15)
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
                await self.last_exchange.user.remove()
                await self.last_exchange.reply.remove()
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
        self.last_exchange = LastExchange(views[-2], views[-1]) if len(views) >= 2 else None

    async def _ask(self, ask: Ask, user: ChatMessage) -> None:
        """A new reply view under `user`, written by `ask(on_text, stop)` on the worker thread."""
        self.last_exchange = None
        overlay = self.core.status().item(Overlay.KIND)
        state = "ON" if overlay.on else "OFF" if overlay.loaded else "none"
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
        self.last_exchange = LastExchange(user, view)
        reply, div = outcome.reply, outcome.divergence  # the meter's measure (None: it was off)
        snapshot = self.core.status()
        loaded = {item.kind for item in snapshot.items if item.loaded is not None}
        view.header.update(reply_header(reply, div, Overlay.KIND in loaded, ControlVector.KIND in loaded))
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
        self._switch(Overlay.KIND, "no overlay is loaded")

    def action_toggle_control(self) -> None:
        self._switch(ControlVector.KIND, "no control vector is installed")

    def _switch(self, kind: str, none_loaded: str) -> None:
        """F2 and ctrl+t: flip the overlay or the control vector from the next reply (journalled by the core)."""
        item = self.core.status().item(kind)
        if item.loaded is None:  # none installed, or refused at unlock (e.g. bound to another base): say why, switch nothing
            self.notify(item.problem or none_loaded, severity="error" if item.problem else "warning")
            return
        if self.replies.busy:  # the reply under way keeps the state it started in; its provenance says which
            self.notify("a reply is being written: escape stops it, then switch", severity="warning")
            return
        try:
            on = self.core.toggle(kind)
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        self.refresh_status()
        self.notify(f"{BY_KIND[kind].NOUN} {'ON' if on else 'OFF'} from the next reply")

    def action_toggle_audit(self) -> None:
        self.core.audit.enabled = not self.core.audit.enabled
        self.refresh_status()

    async def action_new_session(self) -> None:
        await self.replies.halt()
        try:
            self.core.new_session()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        await self.query_one("#messages", VerticalScroll).remove_children()
        self.last_exchange, self.editing = None, False
        self.query_one(StatusBar).divergence = None
        self.refresh_context(None)
        self.refresh_status()

    async def action_regenerate(self) -> None:
        last = self._exchange_to_take_back("regenerate")
        if last is None:
            return
        self.editing = False  # an edit under way would take back the new exchange instead
        await last.reply.remove()
        await self._ask(self.core.regenerate, last.user)

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

    def _exchange_to_take_back(self, what: str) -> Optional[LastExchange]:
        """The views of the last exchange, if it can be taken back now; else None, and the reason shown."""
        if self.replies.busy:
            self.notify(f"a reply is being written: escape stops it, then {what}", severity="warning")
            return None
        if self.last_exchange is None or not self.core.can_take_back():
            self.notify(f"no reply to {what} yet", severity="warning")
            return None
        return self.last_exchange

    def action_copy_reply(self) -> None:
        """The last reply on screen, to the clipboard."""
        text = self.core.last_reply() if self.last_exchange is not None else ""
        if not text:
            self.notify("no reply to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(printable(text))
        self.notify(f"copied the last reply ({len(text)} characters) by OSC 52, if the terminal allows it")

    def action_copy_code(self) -> None:
        """One code block of the last reply, to the clipboard: the last block first, then each press the one before."""
        blocks = code_blocks(self.core.last_reply()) if self.last_exchange is not None else []
        if self.last_exchange is None or not blocks:
            self.notify("the last reply has no code block", severity="warning")
            return
        n = self.last_exchange.next_code_block(blocks)
        self.app.copy_to_clipboard(printable(blocks[n]))
        self.notify(f"copied code block {n + 1} of {len(blocks)} by OSC 52, if the terminal allows it")

    def action_external_editor(self) -> None:
        """The prompt in $EDITOR and back."""
        if self.replies.busy:  # the reply would stream into a screen the editor has taken
            self.notify("a reply is being written: escape stops it, then edit", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        try:
            prompt.text = edit_in_editor(self.app, self.core.home, prompt.text, killed=self.core.kill_requested)
        except EditorFailed as e:
            self.notify(str(e), severity="error")
            return
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

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

    @work
    async def action_system_prompt(self) -> None:
        """F6: the preset picker (a preset, the model's default, or one written for this session), then the editor if asked."""
        session = self.core.session
        if session is None:  # locked: the chat is not on screen then
            return
        if session.preset is not None:
            current, selected = f"preset {session.preset}", f"preset:{session.preset}"
        elif session.system_prompt is not None:
            current, selected = "written for this session", "write"
        else:
            current, selected = "the model's default", "default"
        try:
            presets = every(self.core.vault)
        except ApplianceError as e:
            self.notify(f"presets unreadable: {e}", severity="error")
            presets = []
        choice = await self.app.push_screen_wait(PresetScreen(presets, current, selected))
        if choice is None:
            return
        kind, name = choice
        if kind == "write":
            text = await self.app.push_screen_wait(SystemPromptScreen(session.system_prompt or ""))
            if text is not None:
                self.core.set_system_prompt(text.strip() or None)
                self.notify("system prompt set for this session" if text.strip() else "system prompt: the model's default")
        elif kind == "default":
            self.core.set_system_prompt(None)
            self.notify("system prompt: the model's default")
        elif name is not None:
            try:
                self.core.use_preset(name)
            except ApplianceError as e:
                self.notify(str(e), severity="error")
                return
            self.notify(f"system prompt: preset {name}, from the next reply")

    @work
    async def action_erase_overlay(self) -> None:
        """The loaded overlay, every installed version, once its name is typed."""
        overlay = self.core.status().item(Overlay.KIND).loaded
        if overlay is None:
            self.notify("no overlay is loaded", severity="warning")
            return
        what = f"overlay {overlay.name} (every installed version)"
        await self._erase(overlay.name, what, partial(self.core.erase, Overlay.KIND))

    @work
    async def action_erase_journal(self) -> None:
        """Every journal session, this one included, once the phrase is typed."""
        await self._erase(ERASE_JOURNAL_PHRASE, "every journal session, this one included", self.core.erase_journal)

    async def _erase(self, phrase: str, what: str, erase: Callable[[], list[str]]) -> None:
        if not await self.app.push_screen_wait(EraseScreen(phrase, what)):
            return
        await self.replies.halt()
        try:
            key_ids = erase()
        except ApplianceError as e:
            self.notify(str(e), severity="error", timeout=10)
        else:
            self.notify(f"crypto-erased: {', '.join(key_ids)}", timeout=10)
        self.refresh_status()
