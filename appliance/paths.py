"""Where the appliance keeps its state: `$APPLIANCE_HOME`, else the platform's user data dir."""

import os
from pathlib import Path

import platformdirs

# The journal's folder under the state dir: the journal writes there, `erase all` removes it.
JOURNAL_DIR = "journal"


def state_dir() -> Path:
    home = os.environ.get("APPLIANCE_HOME")
    return Path(home) if home else Path(platformdirs.user_data_dir("appliance", appauthor=False))
