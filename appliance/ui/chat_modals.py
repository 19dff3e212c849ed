"""The chat's modal flows: a dialog over the chat (modals.py), then one call into the core, and a notice
of what came of it. The chat screen's actions for these keys (F6, the erase keys) are one line each."""

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Optional

from ..erase import ERASE_JOURNAL_PHRASE
from ..errors import ApplianceError
from ..overlay.files import Overlay
from .modals import EraseScreen, PresetScreen, SystemPromptScreen

if TYPE_CHECKING:
    from .chat import ChatScreen


def pick_system_prompt(chat: "ChatScreen") -> None:
    """F6: the preset picker (a preset, the model's default, or one written for this session), then the editor if asked."""
    session = chat.core.session
    if session is None:  # locked: the chat is not on screen then
        return
    if session.preset is not None:
        current, selected = f"preset {session.preset}", f"preset:{session.preset}"
    elif session.system_prompt is not None:
        current, selected = "written for this session", "write"
    else:
        current, selected = "the model's default", "default"
    try:
        presets = chat.core.presets()
    except ApplianceError as e:
        chat.notify(f"presets unreadable: {e}", severity="error")
        presets = []

    def picked(choice: Optional[tuple[str, Optional[str]]]) -> None:
        if choice is None:
            return
        kind, name = choice
        if kind == "write":
            chat.app.push_screen(SystemPromptScreen(session.system_prompt or ""), written)
        elif kind == "default":
            chat.core.set_system_prompt(None)
            chat.notify("system prompt: the model's default")
        elif name is not None:
            try:
                chat.core.use_preset(name)
            except ApplianceError as e:
                chat.notify(str(e), severity="error")
                return
            chat.notify(f"system prompt: preset {name}, from the next reply")

    def written(text: Optional[str]) -> None:
        if text is not None:
            chat.core.set_system_prompt(text.strip() or None)
            chat.notify("system prompt set for this session" if text.strip() else "system prompt: the model's default")

    chat.app.push_screen(PresetScreen(presets, current, selected), picked)


def confirm_erase_overlay(chat: "ChatScreen") -> None:
    """The loaded overlay, every installed version, once its name is typed."""
    overlay = chat.core.status().item(Overlay.KIND).loaded
    if overlay is None:
        chat.notify("no overlay is loaded", severity="warning")
        return
    _confirm_erase(
        chat, overlay.name, f"overlay {overlay.name} (every installed version)", partial(chat.core.erase, Overlay.KIND)
    )


def confirm_erase_journal(chat: "ChatScreen") -> None:
    """Every journal session, this one included, once the phrase is typed."""
    _confirm_erase(chat, ERASE_JOURNAL_PHRASE, "every journal session, this one included", chat.core.erase_journal)


def _confirm_erase(chat: "ChatScreen", phrase: str, what: str, erase: Callable[[], list[str]]) -> None:
    async def confirmed(yes: Optional[bool]) -> None:
        if yes:
            await chat.replies.halt()
            _erased(chat, erase)

    chat.app.push_screen(EraseScreen(phrase, what), confirmed)


def _erased(chat: "ChatScreen", erase: Callable[[], list[str]]) -> None:
    try:
        key_ids = erase()
    except ApplianceError as e:
        chat.notify(str(e), severity="error", timeout=10)
    else:
        chat.notify(f"crypto-erased: {', '.join(key_ids)}", timeout=10)
    chat.refresh_status()
