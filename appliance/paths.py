"""Where the appliance keeps its state: `$APPLIANCE_HOME`, else the platform's user data dir."""

import os
from pathlib import Path

import platformdirs


def state_dir() -> Path:
    home = os.environ.get("APPLIANCE_HOME")
    return Path(home) if home else Path(platformdirs.user_data_dir("appliance", appauthor=False))
