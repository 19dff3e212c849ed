"""Loading a verified image into local container storage with skopeo, or saying how to.

The source is the verified `dir:` layout in the store (`store/objects/<manifest sha256>/artifacts`),
loaded as `localhost/NAME:VERSION` and, for the version that runs, also as `localhost/NAME:active`:
`podman run ... localhost/NAME:active` runs the version `appliance image use` chose. The storage is
the containers default (as root `/var/lib/containers/storage`), or the one the `storage.conf` named
by `$CONTAINERS_STORAGE_CONF` says. skopeo checks each blob against its digest as it copies.

Without skopeo (inside the appliance's own container, say) nothing is loaded: the verified layout
stays in the store, which is the state volume, and the commands that load it are returned for the
operator to run on the host.
"""

import shlex
import shutil
from pathlib import Path

from .. import children
from ..errors import Refused

ACTIVE_TAG = "active"
# What skopeo reads to find container storage (as root, or rootless under the user's home).
SKOPEO_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME",
              "CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF")  # fmt: skip


class ImageLoadFailed(Refused):
    """skopeo could not load the verified layout into container storage; the appliance's state is as it was."""


def reference(name: str, tag: str) -> str:
    return f"containers-storage:localhost/{name}:{tag}"


def load_commands(layout: Path, name: str, version: int) -> list[list[str]]:
    """The skopeo commands that load `layout` as NAME:VERSION and NAME:active."""
    return [["skopeo", "copy", "--quiet", f"dir:{layout.absolute()}", reference(name, tag)] for tag in (str(version), ACTIVE_TAG)]


def commands_text(layout: Path, name: str, version: int) -> str:
    return " && ".join(shlex.join(c) for c in load_commands(layout, name, version))


def skopeo_available() -> bool:
    return shutil.which("skopeo") is not None


def load(layout: Path, name: str, version: int) -> bool:
    """Load the version and point the `active` tag at it; False (nothing done) when skopeo is not installed."""
    if not skopeo_available():
        return False
    for command in load_commands(layout, name, version):
        # The appliance's own umask (077, appliance/hardening.py) would make the image's layers
        # unreadable to the image's user: container storage is not the appliance's state.
        r = children.run(command, keep=SKOPEO_ENV, capture_output=True, text=True, umask=0o022)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise ImageLoadFailed(f"skopeo could not load {name} v{version} into container storage: {last}")
    return True
