"""Where the appliance keeps its state: `$APPLIANCE_HOME`, else the platform's user data dir."""

import os
from pathlib import Path

import platformdirs

# Folders under the state dir. `erase all` removes them: the journal is keyless without the vault,
# and the store's and the trust policy's records were sealed by it (`state_files`), so nothing
# there can be trusted by the vault a later `init` makes.
JOURNAL_DIR = "journal"
STORE_DIR = "store"
TRUST_DIR = "trust"


def state_dir() -> Path:
    home = os.environ.get("APPLIANCE_HOME")
    return Path(home) if home else Path(platformdirs.user_data_dir("appliance", appauthor=False))
