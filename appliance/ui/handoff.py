"""The chat's hand-offs to the terminal: the prompt out to `$EDITOR` and back (ctrl+e; the scratch file's
rules: external_editor.py, editor_scratch.py), the last reply or one of its code blocks to the clipboard by OSC 52.

OSC 52 because an isolated machine has no clipboard daemon: the terminal itself takes the text. What
is copied is the text as shown, escaped (`printable`): raw control characters pasted into a shell
could run commands (a bracketed-paste end sequence in a reply would end the paste early)."""

from contextlib import nullcontext
from typing import TYPE_CHECKING

from ..editor_scratch import scratch_file
from ..printable import printable
from .code_blocks import code_blocks
from .external_editor import EditorFailed, editor_command, read_back, run_editor
from .widgets import PromptInput

if TYPE_CHECKING:
    from .chat import ChatScreen


def edit_prompt_in_editor(chat: "ChatScreen") -> None:
    """The prompt in $EDITOR. The screen is handed to the editor until it exits (Textual draws nothing
    meanwhile); a kill from another terminal ends it."""
    if chat.replies.busy:  # the reply would stream into a screen the editor has taken
        chat.notify("a reply is being written: escape stops it, then edit", severity="warning")
        return
    prompt = chat.query_one(PromptInput)
    try:
        command = editor_command()
        with scratch_file(chat.core.home, prompt.text) as path:
            # Headless (no terminal to hand over, as under test) the editor runs without suspending the screen.
            with nullcontext() if chat.app.is_headless else chat.app.suspend():
                run_editor(command, path, killed=chat.core.kill_requested)
            text = read_back(path)
    except EditorFailed as e:
        chat.notify(str(e), severity="error")
        return
    prompt.text = text
    prompt.move_cursor(prompt.document.end)
    prompt.focus()


def copy_reply(chat: "ChatScreen") -> None:
    """The last reply on screen."""
    text = chat.core.last_reply() if chat.last_exchange is not None else ""
    if not text:
        chat.notify("no reply to copy yet", severity="warning")
        return
    chat.app.copy_to_clipboard(printable(text))
    chat.notify(f"copied the last reply ({len(text)} characters) by OSC 52, if the terminal allows it")


def copy_code(chat: "ChatScreen") -> None:
    """One code block of the last reply: the last block first, then each press the one before."""
    blocks = code_blocks(chat.core.last_reply()) if chat.last_exchange is not None else []
    if not blocks:
        chat.notify("the last reply has no code block", severity="warning")
        return
    n = len(blocks) - 1 - chat.code_blocks_copied % len(blocks)
    chat.code_blocks_copied += 1
    chat.app.copy_to_clipboard(printable(blocks[n]))
    chat.notify(f"copied code block {n + 1} of {len(blocks)} by OSC 52, if the terminal allows it")
