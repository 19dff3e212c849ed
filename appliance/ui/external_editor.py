"""Long prompts from `$EDITOR` (ctrl+e): a scratch file under the state dir that exists only while the editor runs.

Rules (docs/procedures.md, "Long prompts from an editor", says the same to the operator):
1. the file and its directory under `<state>/editor/` are `editor_scratch`'s (never through a planted
   link; mode 0700 and 0600);
2. the editor is `$VISUAL`, else `$EDITOR`, else `vi`, split as a shell would and run without a shell,
   started as every child is (`children`): in the scratch directory, with the terminal's variables only;
3. however the editor ends (saved, failed, killed), every regular file in that directory (the prompt,
   and an editor's swap or backup files beside it) is overwritten with zeros and the directory is
   removed before the text is used (`editor_scratch.wipe`);
4. what a run that crashed left under `<state>/editor/` is wiped the same way first, and by the erases;
5. the text read back is UTF-8 (a byte that is not is replaced), without the final newline editors add;
6. the editor owns the terminal until it exits, but a kill (from another terminal) ends it within
   `POLL_SECONDS`, and the kill then runs as usual.
"""

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from .. import children
from ..errors import Refused

POLL_SECONDS = 0.02  # how often a running editor checks for a kill (the chat's own kill poll is as often)


class EditorFailed(Refused):
    """The external editor could not be started or did not exit cleanly: the prompt is left as it was."""


def editor_command() -> list[str]:
    """Rule 2."""
    command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise EditorFailed(f"cannot read the editor command {command!r}: {e}") from None
    if not words:
        raise EditorFailed("the editor command is empty")
    return words


def run_editor(command: list[str], path: Path, killed: Callable[[], bool]) -> None:
    """Rule 6: the editor on `path`; EditorFailed unless it exits with status 0."""
    try:
        # The terminal stays the editor's (stdin, stdout, stderr inherited); a relative save lands beside the prompt.
        path = path.absolute()
        editor = children.popen([*command, str(path)], keep=children.TERMINAL, cwd=str(path.parent))
    except OSError as e:
        raise EditorFailed(f"cannot start the editor {command[0]!r}: {e.strerror}") from None
    while True:
        try:
            code = editor.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if killed():
                editor.kill()
    if code != 0:
        raise EditorFailed(f"the editor exited with status {code}: the prompt is unchanged")


def read_back(path: Path) -> str:
    """Rule 5."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:  # the editor saved elsewhere or removed it: nothing came back
        return ""
    return text[:-1] if text.endswith("\n") else text
