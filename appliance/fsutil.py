"""Durable file changes: a write either lands whole or not at all, even across power loss.

A write interrupted by a kill or a power cut leaves its temp file (`.NAME.tmp-PID`) beside the
target: `remove_stale_temps` clears them where the caller knows that no write is in flight.
`discard` removes files or folders in a time that does not grow with their size.
"""

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from . import children

TEMP_NAME = re.compile(r"\..+\.tmp-[0-9]+")  # what `atomic_file` names its temp file
TRASH_DIR = ".erased"  # under the state dir: what `discard` moved away, until its unlink finishes


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, mode: int = 0o600, staging: Path | None = None) -> Iterator[BinaryIO]:
    """Write `path` through a temp file in the same directory: fsync, rename over `path`, fsync the directory.

    If the body raises, the temp file is removed and `path` is untouched. `staging` (a directory on the same
    filesystem) holds the temp file instead: where `path`'s own directory is too large to search for stale temps.
    """
    tmp = (staging or path.parent) / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # `mode` exactly, whatever the umask (or a stale temp file) gave
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    if staging is not None:
        fsync_dir(staging)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, staging: Path | None = None) -> None:
    with atomic_file(path, mode, staging) as f:
        f.write(data)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files interrupted `atomic_file` writes left in `directory`; returns them.

    Only for a caller that knows no write into `directory` is in flight (it holds the lock every
    writer there holds): a temp file may be a whole copy of what its target held, secrets included.
    """
    try:
        stale = [p for p in directory.iterdir() if TEMP_NAME.fullmatch(p.name) and p.is_file()]
    except FileNotFoundError:
        return []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        fsync_dir(directory)  # the removal must survive a power cut as surely as the write it undoes
    return stale


def discard(home: Path, paths: list[Path]) -> list[Path]:
    """Remove files or folders under `home` (keyless ciphertext) in a time that does not grow with their size.

    Each is renamed out of sight into one fresh batch under `<home>/.erased/` (O(1), fsynced once per
    folder), then the batch is unlinked by a detached process: freeing a large file's blocks takes
    time in proportion to its size. Returns the paths that existed.
    """
    batch = home / TRASH_DIR / os.urandom(8).hex()  # this call's own: nothing else races on it
    batch.mkdir(mode=0o700, parents=True)
    moved: list[Path] = []
    emptied: set[Path] = set()
    for path in paths:
        if path.exists():
            os.rename(path, batch / str(len(moved)))
            emptied.add(path.parent)
            moved.append(path)
    for folder in emptied | {batch}:  # once each, not once per file
        fsync_dir(folder)
    _unlink_detached(batch)
    return moved


def _unlink_detached(directory: Path) -> None:
    """Remove `directory` in a detached process that outlives this command."""
    children.popen(
        ["/bin/rm", "-rf", "--", str(directory.absolute())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
