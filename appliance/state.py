"""The appliance's state directory: created once by `appliance init`, required by everything else."""

import json
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import NotFound
from .fsutil import atomic_write, fsync_dir

STATE_FILE = "appliance.json"
STATE_FORMAT = "appliance-state/1"


def is_initialised(home: Path) -> bool:
    return (home / STATE_FILE).is_file()


def initialise(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    record = {
        "format": STATE_FORMAT,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "created_by": __version__,
    }
    atomic_write(home / STATE_FILE, (json.dumps(record, indent=2) + "\n").encode())
    fsync_dir(home.parent)


def require_initialised(home: Path) -> None:
    if not is_initialised(home):
        raise NotFound(f"{home} is not initialised: run `appliance init`")
