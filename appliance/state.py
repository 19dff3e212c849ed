"""The appliance's state directory: created once by `appliance init`, required by everything else.

`init` is all or nothing: its steps run inside `initialising`, and the marker file that says
"initialised" (`appliance.json`) is written last, only when every step succeeded. A directory
without the marker is not a state dir (every command says "run `appliance init`"), and running
`init` again finishes it: the vault's own order (keys.py) leaves either no vault or a whole one.
A failed `init` that made the directory itself removes it again.
"""

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import EnvironmentRefused, NotFound
from .fsutil import atomic_write, fsync_dir
from .utc import now_text

STATE_FILE = "appliance.json"
STATE_FORMAT = "appliance-state/1"


class NotInitialised(NotFound):
    """The state dir has no marker: `appliance init` was never run there, or did not finish."""


def is_initialised(home: Path) -> bool:
    return (home / STATE_FILE).is_file()


def require_directory(home: Path) -> None:
    """Refuse a state dir path that names something other than a directory (exit 3, nothing created)."""
    if home.exists() and not home.is_dir():
        raise EnvironmentRefused(
            f"{home} is not a directory: APPLIANCE_HOME must name a directory, or a path where one can be made"
        )


@contextmanager
def initialising(home: Path) -> Iterator[None]:
    """Make `home` (mode 0700) for the body's steps, then write the marker; on any failure, no marker.

    Already initialised: the body runs and the marker stays as it is. If this call created `home`,
    a failure removes it, so a refused `init` leaves the disk as it found it.
    """
    require_directory(home)
    if is_initialised(home):
        yield
        return
    try:
        home.mkdir(mode=0o700, parents=True)
        created = True
    except FileExistsError:
        created = False
    try:
        home.chmod(0o700)
        yield
        record = {
            "format": STATE_FORMAT,
            "created": now_text(),
            "created_by": __version__,
        }
        atomic_write(home / STATE_FILE, (json.dumps(record, indent=2) + "\n").encode())
        fsync_dir(home.parent)
    except BaseException:
        if created:
            shutil.rmtree(home, ignore_errors=True)
        raise


def initialise(home: Path) -> None:
    """The state dir alone (no vault): what `init` makes when no passphrase is given yet."""
    with initialising(home):
        pass


def require_initialised(home: Path) -> None:
    require_directory(home)
    if not is_initialised(home):
        raise NotInitialised(f"{home} is not initialised: run `appliance init`")
