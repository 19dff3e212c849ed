"""The only plaintext the appliance writes: a prompt handed to `$EDITOR`, in a scratch file under the state dir.

Rules (docs/procedures.md, "Long prompts from an editor", says the same to the operator):
1. `<state>/editor/` is a directory of mode 0700, opened without following a link: anything else
   found at that name (a symlink planted to send the prompt, and the wipe, somewhere else; a file)
   is removed, the link itself and never what it points to, and a fresh directory is made;
2. each prompt goes in a fresh directory (mode 0700) in it, in a file created with O_EXCL and mode
   0600, so no other user can read it and nothing outside the state dir holds it;
3. `wipe` overwrites every regular file under `<state>/editor/` with zeros (opened without following
   a link) and removes everything in it. It runs when the editor exits however it exits, before the next
   prompt is written (what a crash left), and at every erase that promises nothing readable is left
   (`erase all`, `erase logs`, a kill's wipe: `appliance.erase`).
"""

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EDITOR_DIR = "editor"  # under the state dir
PROMPT_FILE = "prompt.md"  # an editor picks Markdown highlighting from the name


def _open_editor_dir(home: Path) -> int:
    """Rule 1: a descriptor of `<state>/editor/`, a real directory of mode 0700."""
    parent = home / EDITOR_DIR
    while True:
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            try:
                os.mkdir(parent, 0o700)
            except FileExistsError:
                pass  # made meanwhile: opened (and checked) on the next pass
            continue
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):  # ELOOP: the name is a symlink
                raise
            os.unlink(parent)  # the link itself (or a file), never its target
            continue
        os.fchmod(fd, 0o700)  # whatever made it before
        return fd


@contextmanager
def scratch_file(home: Path, text: str) -> Iterator[Path]:
    """Rules 2 and 3: a 0600 file holding `text`, wiped with every other scratch file when the block ends."""
    wipe(home)
    parent = _open_editor_dir(home)
    try:
        name = f"tmp{secrets.token_hex(8)}"
        os.mkdir(name, 0o700, dir_fd=parent)
        directory = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        fd = os.open(PROMPT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        yield home / EDITOR_DIR / name / PROMPT_FILE
    finally:
        os.close(directory)
        wipe(home)


def wipe(home: Path) -> None:
    """Rule 3: zeros over every regular file under `<state>/editor/`, then all in it removed (a link: only the link)."""
    parent = home / EDITOR_DIR
    if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
        parent.unlink(missing_ok=True)
        return
    if not parent.is_dir():
        return
    for _root, _dirs, files, dir_fd in os.fwalk(parent, follow_symlinks=False):
        for name in files:
            _zero(name, dir_fd)
    for entry in list(os.scandir(parent)):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)  # works through descriptors: a link inside is removed as a link
        else:
            Path(entry.path).unlink(missing_ok=True)


def _zero(name: str, dir_fd: int) -> None:
    """Overwrite a regular file in place; a link, a pipe or a device is left to the removal."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        left = st.st_size if stat.S_ISREG(st.st_mode) else 0
        while left > 0:
            left -= os.write(fd, bytes(min(left, 1 << 20)))
        os.fsync(fd)
    except OSError:
        pass  # removed all the same just after; the runbook says what an overwrite cannot promise
    finally:
        os.close(fd)
