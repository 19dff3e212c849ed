"""The build station's side of an image bundle: a `skopeo copy ... dir:` layout and its build record, packed unsigned.

`image/build` writes the layout and `build-info.json` beside it (source commit, SOURCE_DATE_EPOCH, the
SHA-256 of the base tar and of the lock). The two digests are read from the layout itself, every file
of the layout becomes an artifact under its own name, and the bundle is checked by the rules the
appliance applies (`trust.image_rules`) before it is left in place: a bundle the appliance would
refuse is never handed to the signers.
"""

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..progress import SILENT, Steps
from ..trust.bundle import create_bundle
from ..trust.image_rules import OCI_MANIFEST, check_image
from ..trust.manifest import Manifest

BUILD_INFO = "build-info.json"
BUILD_FIELDS = ("source_commit", "source_date_epoch", "base_sha256", "lock_sha256")


def layout_digests(layout: Path) -> tuple[str, str]:
    """(OCI manifest digest, config digest) of a `dir:` layout, as `sha256:<hex>`."""
    data = (layout / OCI_MANIFEST).read_bytes()
    try:
        config = json.loads(data)["config"]["digest"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{layout / OCI_MANIFEST}: not an image manifest") from None
    return f"sha256:{hashlib.sha256(data).hexdigest()}", config


def read_build_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
        return {k: info[k] for k in BUILD_FIELDS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a build record with {', '.join(BUILD_FIELDS)} ({e})") from None


def pack_image(
    layout: Path,
    out: Path,
    *,
    name: str,
    version: int,
    build_info: dict,
    created: Optional[datetime] = None,
    expires: Optional[str] = None,
    steps: Steps = SILENT,
) -> Manifest:
    """Write the unsigned image bundle `out` from `layout`; removed again if the appliance's rules refuse it."""
    files = sorted(layout.iterdir())
    if not files or not all(f.is_file() and not f.is_symlink() for f in files):
        raise UsageError(f"{layout}: a skopeo dir: layout holds regular files only")
    manifest_digest, config_digest = layout_digests(layout)
    record = {"manifest_digest": manifest_digest, "config_digest": config_digest, **build_info}
    manifest = create_bundle(
        out,
        kind="image",
        name=name,
        version=version,
        artifacts=files,
        created=created,
        expires=expires,
        image=record,
        provenance={"source": str(build_info["source_commit"])},
        steps=steps,
    )
    try:
        check_image(manifest, layout)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return manifest
