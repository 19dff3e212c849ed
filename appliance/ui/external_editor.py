"""Long prompts from `$EDITOR` (ctrl+e): a scratch file under the state dir that exists only while the editor runs.

Rules (docs/procedures.md, "Long prompts from an editor", says the same to the operator):
1. the file is created in a fresh directory (mode 0700) under `<state>/editor/`, with O_EXCL and
   mode 0600, so no other user can read a prompt and nothing outside the state dir holds one;
2. the editor is `$VISUAL`, else `$EDITOR`, else `vi`, split as a shell would and run without a shell,
   started as every child is (`children`): in the scratch directory, with the terminal's variables only;
3. however the editor ends (saved, failed, killed), every regular file in that directory (the prompt,
   and an editor's swap or backup files beside it) is overwritten with zeros and the directory is
   removed before the text is used;
4. directories left under `<state>/editor/` by a run that crashed are wiped the same way first;
5. the text read back is UTF-8 (a byte that is not is replaced), without the final newline editors add;
6. the editor owns the terminal until it exits, but a kill (from another terminal) ends it within
   `POLL_SECONDS`, and the kill then runs as usual.
"""

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import children
from ..errors import Refused

EDITOR_DIR = "editor"  # under the state dir
PROMPT_FILE = "prompt.md"  # an editor picks Markdown highlighting from the name
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


@contextmanager
def scratch_file(home: Path, text: str) -> Iterator[Path]:
    """Rules 1, 3 and 4: a 0600 file holding `text`, wiped with its directory when the block ends."""
    parent = home / EDITOR_DIR
    parent.mkdir(mode=0o700, exist_ok=True)
    parent.chmod(0o700)  # whatever made it before
    for stale in parent.iterdir():
        _wipe(stale)
    directory = Path(tempfile.mkdtemp(dir=parent))  # mode 0700
    try:
        path = directory / PROMPT_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        yield path
    finally:
        _wipe(directory)


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


def _wipe(directory: Path) -> None:
    if not directory.is_dir() or directory.is_symlink():
        directory.unlink(missing_ok=True)
        return
    for root, _dirs, files in os.walk(directory):
        for name in files:
            _zero(Path(root) / name)
    shutil.rmtree(directory, ignore_errors=True)


def _zero(path: Path) -> None:
    """Overwrite a regular file in place (never follow a link an editor left)."""
    if path.is_symlink() or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        left = os.fstat(fd).st_size
        while left > 0:
            left -= os.write(fd, bytes(min(left, 1 << 20)))
        os.fsync(fd)
    except OSError:
        pass  # removed all the same just after; the runbook says what an overwrite cannot promise
    finally:
        os.close(fd)
