"""The chat's hand-off of the prompt to the terminal: out to `$EDITOR` and back (ctrl+e; the scratch file's rules:
external_editor.py, editor_scratch.py)."""

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from textual.app import App

from ..editor_scratch import scratch_file
from .external_editor import editor_command, read_back, run_editor


def edit_in_editor(app: App, home: Path, text: str, killed: Callable[[], bool]) -> str:
    """`text` edited in $EDITOR; raises `EditorFailed`. The screen is handed to the editor until it exits (Textual
    draws nothing meanwhile); a kill from another terminal ends it."""
    command = editor_command()
    with scratch_file(home, text) as path:
        # Headless (no terminal to hand over, as under test) the editor runs without suspending the screen.
        with nullcontext() if app.is_headless else app.suspend():
            run_editor(command, path, killed=killed)
        return read_back(path)
