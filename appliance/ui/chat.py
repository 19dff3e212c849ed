"""The chat screen: messages, the prompt, the status bar; replies are generated on a worker thread."""

import threading
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Optional

from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Markdown
from textual.widgets.markdown import MarkdownStream
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from ..erase import ERASE_JOURNAL_PHRASE
from ..errors import ApplianceError
from ..printable import printable
from .code_blocks import code_blocks
from .core import ChatCore, Outcome
from .external_editor import EditorFailed, editor_command, read_back, run_editor, scratch_file
from .keys import CHAT_KEYS, bindings
from .modals import EraseScreen, PresetScreen, SystemPromptScreen
from .sessions import SessionsScreen
from .widgets import ChatMessage, PromptInput, StatusBar


class ChatScreen(Screen):
    KEYS = CHAT_KEYS
    BINDINGS = bindings(CHAT_KEYS)

    def __init__(self, core: ChatCore):
        super().__init__()
        self.core = core
        self.stop_event: Optional[threading.Event] = None
        self.worker: Optional[Worker] = None
        self.editing = False  # the next send replaces the last exchange (edit and resend)
        self._last: Optional[tuple[ChatMessage, ChatMessage]] = None  # the views of the last whole exchange
        self._code_copied = 0  # code blocks of the last reply copied so far (ctrl+g walks back through them)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield VerticalScroll(id="messages")
        yield PromptInput(id="prompt", placeholder="Message (enter sends, ctrl+j new line, F1 help)")
        yield Footer()

    def on_mount(self) -> None:
        snapshot = self.core.status()
        status = self.query_one(StatusBar)
        status.base, status.window = f"{snapshot.base_name} {snapshot.base_sha256[:8]}", self.core.window
        self.refresh_status()
        if snapshot.overlay_problem:
            self.notify(f"overlay not loaded: {snapshot.overlay_problem}", severity="error", timeout=15)
        if self.core.control_problem:
            self.notify(f"control vector not loaded: {self.core.control_problem}", severity="error", timeout=15)
        self.query_one(PromptInput).focus()
        if self.core.session is not None and self.core.session.history:  # resumed at unlock (`chat --resume`)
            self.call_later(self._show_history)
        notices, self.core.notices = self.core.notices, []
        for notice in notices:
            self.notify(notice, severity="warning", timeout=15)

    def refresh_status(self) -> None:
        status, snapshot = self.query_one(StatusBar), self.core.status()
        p = snapshot.overlay
        if p is None:
            status.overlay = "refused (see message)" if snapshot.overlay_problem else "none installed"
            status.overlay_on = None
        else:
            demo = " [DEMO KEYS]" if p.demo_signers else ""  # never let a demo pass for production trust
            status.overlay = f"{p.name} v{p.version} signers {' '.join(s[:8] for s in p.signers)}{demo}"
            status.overlay_on = snapshot.overlay_on
        c = snapshot.control
        if c is None:
            status.control, status.control_on = ("refused (see message)" if self.core.control_problem else ""), None
        else:
            demo = " [DEMO KEYS]" if c.demo_signers else ""
            status.control = f"{c.name} v{c.version} strength {snapshot.control_strength:.3g}{demo}"
            status.control_on = snapshot.control_on
        status.session = snapshot.session_id
        status.audit = self.core.audit.enabled

    @property
    def busy(self) -> bool:
        return self.worker is not None

    # -- messages -------------------------------------------------------------------

    async def add_message(self, role: str, text: str = "", header: str = "") -> ChatMessage:
        view = ChatMessage(role, text, header)
        messages = self.query_one("#messages", VerticalScroll)
        await messages.mount(view)
        messages.scroll_end(animate=False)
        return view

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.busy:
            self.query_one(PromptInput).text = event.text  # kept for when the reply is done
            self.notify("a reply is still being written: escape stops it", severity="warning")
            return
        ask: Callable[[Callable[[str], None], threading.Event], Outcome] = partial(self.core.reply, event.text)
        if self.editing:
            self.editing = False
            ask = partial(self.core.edit, event.text)
            if self._last is not None:
                for old in self._last:
                    await old.remove()
        user = await self.add_message("user", event.text)
        await self._ask(ask, user)

    async def _show_history(self) -> None:
        """The views of a resumed session's history; its last exchange can be regenerated or edited."""
        messages = self.query_one("#messages", VerticalScroll)
        await messages.remove_children()
        views = []
        for turn in self.core.session.history:
            role = turn["role"]
            views.append(await self.add_message(role, turn["content"], header="" if role == "user" else "assistant  (resumed)"))
        self._last = (views[-2], views[-1]) if len(views) >= 2 else None
        self._code_copied = 0

    async def _ask(self, ask: Callable[[Callable[[str], None], threading.Event], Outcome], user: ChatMessage) -> None:
        """A new reply view under `user`, written by `ask(on_text, stop)` on the worker thread."""
        self._last = None
        snapshot = self.core.status()
        state = "ON" if snapshot.overlay_on else "OFF" if snapshot.overlay else "none"
        view = await self.add_message("assistant", header=f"assistant  overlay {state}")
        self.stop_event = threading.Event()
        self.query_one(StatusBar).busy = True
        self.worker = self._generate(ask, user, view, Markdown.get_stream(view.body), self.stop_event)

    class TextPending(Message):
        """The worker wrote pieces of the reply into `pending`: draw them."""

        def __init__(self, stream: MarkdownStream, pending: deque):
            super().__init__()
            self.stream, self.pending = stream, pending

    @work(thread=True, exit_on_error=False, group="reply")
    def _generate(self, ask, user: ChatMessage, view: ChatMessage, stream: MarkdownStream, stop: threading.Event) -> None:
        pending: deque[str] = deque()  # pieces the model wrote that the UI has not drawn yet

        def on_text(piece: str) -> None:  # never waits for the UI: tok/s stays the model's
            pending.append(piece)
            if len(pending) == 1:  # else a draw is already due and takes this piece too
                self.post_message(self.TextPending(stream, pending))

        try:
            outcome = ask(on_text, stop)
        except ApplianceError as e:  # context full, journal write refused, ...: shown, never a crash
            self.app.call_from_thread(self._finished, user, view, stream, pending, None, str(e))
            return
        self.app.call_from_thread(self._finished, user, view, stream, pending, outcome, "")

    @on(TextPending)
    async def _draw_pending(self, event: TextPending) -> None:
        await self._draw(event.stream, event.pending)

    async def _draw(self, stream: MarkdownStream, pending: deque) -> None:
        parts = []
        while pending:
            parts.append(pending.popleft())
        if parts:  # the model's words may hold ESC and C1 controls, which Textual would pass to the terminal
            await stream.write(printable("".join(parts)))
            self.query_one("#messages", VerticalScroll).scroll_end(animate=False)

    async def _finished(
        self, user: ChatMessage, view: ChatMessage, stream: MarkdownStream, pending: deque, outcome: Optional[Outcome], error: str
    ) -> None:
        await self._draw(stream, pending)  # whatever the queued draws have not taken yet
        await stream.stop()
        self.worker = self.stop_event = None
        status = self.query_one(StatusBar)
        status.busy = False
        if outcome is None:
            view.header.update(f"assistant  error: {error}")
            self.notify(error, severity="error", timeout=10)
            return
        self._last, self._code_copied = (user, view), 0
        reply, div = outcome.reply, outcome.divergence
        facts = [
            f"overlay {'ON' if reply.overlay_on else 'OFF'}" if self.core.status().overlay else "overlay none",
            *([f"control {'ON' if reply.control_on else 'OFF'}"] if self.core.status().control else []),
            f"{len(reply.tokens)} tok",
            f"{reply.tokens_per_second:.1f} tok/s",
        ]
        if reply.finish != "stop":
            facts.append("stopped" if reply.finish == "cancelled" else "cut at max tokens")
        if div is not None:
            facts.append(f"KL rmse {div.rmse:.3f} max {div.max:.3f}")
        view.header.update("assistant  " + "  ".join(facts))
        status.tokens_per_second = reply.tokens_per_second
        self.refresh_context(reply.prompt_tokens + len(reply.tokens))
        if div is not None:
            status.divergence = div
        if reply.dropped_turns:
            self.notify(f"{reply.dropped_turns} oldest exchanges left out to fit the context window", severity="warning")

    def refresh_context(self, used: Optional[int]) -> None:
        """The context meter: tokens in the window after a reply (None: no reply yet), and how many exchanges no longer fit."""
        status = self.query_one(StatusBar)
        status.context_used, status.dropped = used, self.core.dropped_exchanges()

    async def halt(self) -> None:
        """Stop the reply being written (if any) and wait until its worker has returned."""
        if self.worker is None:
            return
        worker = self.worker
        self.stop_event.set()
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed):
            pass  # its own error path has already reported it

    # -- actions -----------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    def action_toggle_overlay(self) -> None:
        snapshot = self.core.status()
        if snapshot.overlay is None:  # refused at unlock (e.g. bound to another base): say why, switch nothing
            self.notify(
                snapshot.overlay_problem or "no overlay is loaded", severity="error" if snapshot.overlay_problem else "warning"
            )
            return
        if self.busy:  # the reply under way keeps the state it started in; its provenance says which
            self.notify("a reply is being written: escape stops it, then switch", severity="warning")
            return
        try:
            on = self.core.toggle()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        self.refresh_status()
        self.notify(f"overlay {'ON' if on else 'OFF'} from the next reply")

    def action_toggle_control(self) -> None:
        if self.core.status().control is None:
            problem = self.core.control_problem
            self.notify(problem or "no control vector is installed", severity="error" if problem else "warning")
            return
        if self.busy:
            self.notify("a reply is being written: escape stops it, then switch", severity="warning")
            return
        try:
            on = self.core.toggle_control()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        self.refresh_status()
        self.notify(f"control vector {'ON' if on else 'OFF'} from the next reply")

    def action_toggle_audit(self) -> None:
        self.core.set_audit(not self.core.audit.enabled)
        self.refresh_status()

    async def action_new_session(self) -> None:
        await self.halt()
        try:
            self.core.new_session()
        except ApplianceError as e:
            self.notify(str(e), severity="error")
            return
        await self.query_one("#messages", VerticalScroll).remove_children()
        self._last, self.editing, self._code_copied = None, False, 0
        self.query_one(StatusBar).divergence = None
        self.refresh_context(None)
        self.refresh_status()

    async def action_regenerate(self) -> None:
        if not self._ready_to_take_back("regenerate"):
            return
        user, old = self._last
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
        if not self._ready_to_take_back("edit"):
            return
        self.editing = True
        prompt.text = self.core.last_prompt()
        prompt.move_cursor(prompt.document.end)
        prompt.focus()
        self.notify("editing the last prompt: enter sends it in place of the last exchange (which stays in the journal)")

    def _ready_to_take_back(self, what: str) -> bool:
        if self.busy:
            self.notify(f"a reply is being written: escape stops it, then {what}", severity="warning")
            return False
        if self._last is None or not self.core.can_take_back():
            self.notify(f"no reply to {what} yet", severity="warning")
            return False
        return True

    def action_copy_reply(self) -> None:
        """OSC 52: the terminal puts the text on the clipboard (no clipboard daemon on an isolated machine).
        The text is the reply as shown, escaped: raw control characters pasted into a shell could run
        commands (a bracketed-paste end sequence in a reply would end the paste early)."""
        text = self.core.last_reply() if self._last is not None else ""
        if not text:
            self.notify("no reply to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(printable(text))
        self.notify(f"copied the last reply ({len(text)} characters) by OSC 52, if the terminal allows it")

    def action_copy_code(self) -> None:
        """One code block by OSC 52, escaped as shown: the last block first, then each press the one before."""
        blocks = code_blocks(self.core.last_reply()) if self._last is not None else []
        if not blocks:
            self.notify("the last reply has no code block", severity="warning")
            return
        n = len(blocks) - 1 - self._code_copied % len(blocks)
        self._code_copied += 1
        self.app.copy_to_clipboard(printable(blocks[n]))
        self.notify(f"copied code block {n + 1} of {len(blocks)} by OSC 52, if the terminal allows it")

    def action_external_editor(self) -> None:
        """The prompt in $EDITOR (the scratch file's rules: external_editor.py). The screen is handed to the
        editor until it exits (Textual draws nothing meanwhile); a kill from another terminal ends it."""
        if self.busy:  # the reply would stream into a screen the editor has taken
            self.notify("a reply is being written: escape stops it, then edit", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        try:
            command = editor_command()
            with scratch_file(self.core.home, prompt.text) as path:
                # Headless (no terminal to hand over, as under test) the editor runs without suspending the screen.
                with nullcontext() if self.app.is_headless else self.app.suspend():
                    run_editor(command, path, killed=self.core.kill_requested)
                text = read_back(path)
        except EditorFailed as e:
            self.notify(str(e), severity="error")
            return
        prompt.text = text
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    def action_sessions(self) -> None:
        self.app.push_screen(SessionsScreen(self.core, self.app.export_dir))

    async def resume_session(self, session_id: str) -> None:
        """F4's resume: the past session's history on screen, the chat continuing it in a new journal session."""
        await self.halt()
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
        session = self.core.session
        if session.preset is not None:
            current, selected = f"preset {session.preset}", f"preset:{session.preset}"
        elif session.system_prompt is not None:
            current, selected = "written for this session", "write"
        else:
            current, selected = "the model's default", "default"
        try:
            presets = self.core.presets()
        except ApplianceError as e:
            self.notify(f"presets unreadable: {e}", severity="error")
            presets = []

        def picked(choice: Optional[tuple[str, Optional[str]]]) -> None:
            if choice is None:
                return
            kind, name = choice
            if kind == "write":
                self.app.push_screen(SystemPromptScreen(self.core.session.system_prompt or ""), written)
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

        def written(text: Optional[str]) -> None:
            if text is not None:
                self.core.set_system_prompt(text.strip() or None)
                self.notify("system prompt set for this session" if text.strip() else "system prompt: the model's default")

        self.app.push_screen(PresetScreen(presets, current, selected), picked)

    def action_erase_overlay(self) -> None:
        overlay = self.core.status().overlay
        if overlay is None:
            self.notify("no overlay is loaded", severity="warning")
            return
        name = overlay.name

        async def erase(confirmed: bool) -> None:
            if confirmed:
                await self.halt()
                self._erased(self.core.erase_overlay)

        self.app.push_screen(EraseScreen(name, f"overlay {name} (every installed version)"), erase)

    def action_erase_journal(self) -> None:
        async def erase(confirmed: bool) -> None:
            if confirmed:
                await self.halt()
                self._erased(self.core.erase_journal)

        self.app.push_screen(EraseScreen(ERASE_JOURNAL_PHRASE, "every journal session, this one included"), erase)

    def _erased(self, erase) -> None:
        try:
            key_ids = erase()
        except ApplianceError as e:
            self.notify(str(e), severity="error", timeout=10)
        else:
            self.notify(f"crypto-erased: {', '.join(key_ids)}", timeout=10)
        self.refresh_status()
