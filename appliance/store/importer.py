"""Importing a bundle, in the brief's verification order; every step refuses with exit 3 and one line.

1. shape and size limits of the tar, then the manifest (`trust.bundle_reader`);
2. signatures and threshold (`trust.policy.TrustStore.verified_signers`);
3. expiry against the time floor: refused if `expires` is not after
   max(now, floor); a clock earlier than the floor is reported;
4. an item keeps its kind, and the version is strictly above every version
   ever accepted for that name (rollback, replay);
5. each artifact's size and SHA-256, hashed while it is copied from the
   bundle into staging: the bytes verified are the bytes kept;
6. binding: an overlay is bound to the active base and admitted by its loader;
7. install: staging renamed into `store/objects/<manifest sha256>`, then
   `store/state.json` replaced, the commit point (files and directories fsynced).

Before step 7 nothing outside the staging directory is written, and staging is
removed on any refusal. For the crash-safety tests only,
`APPLIANCE_TEST_CRASH_AT=<point>` SIGKILLs the process at one of
`CRASH_POINTS`; nothing else reads it.
"""

import json
import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..errors import HashMismatch, NotFound, Refused, SizeMismatch
from ..fsutil import fsync_dir
from ..state import require_initialised
from ..trust.bundle_reader import Bundle, open_bundle
from ..trust.hashing import Progress, sha256_stream
from ..trust.manifest import Manifest, format_time
from ..trust.policy import TrustStore
from .active import Base, check_binding, verify_version
from .layout import ACCEPTED_NAME, STAGING_PREFIX, Item, Store, StoreState

CRASH_POINTS = ("copying", "copied", "stored", "committed")


class ManifestExpired(Refused):
    pass


class VersionNotNewer(Refused):
    pass


class KindChanged(Refused):
    pass


@dataclass(frozen=True)
class Accepted:
    manifest: Manifest
    signers: tuple[str, ...]
    clock_note: str  # "" or why the clock looks wrong


def _crash_point(point: str) -> None:
    if os.environ.get("APPLIANCE_TEST_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_expiry(manifest: Manifest, now: datetime, floor: Optional[datetime]) -> str:
    """Step 3; returns a note when the clock is earlier than the floor (it was set back, or is wrong)."""
    clock_behind = floor is not None and now < floor
    note = ""
    if clock_behind:
        note = f"the clock ({format_time(now)}) is earlier than the time floor ({format_time(floor)}): was it set back?"
    effective = floor if clock_behind else now
    if manifest.expires <= effective:
        against = "the time floor" if clock_behind else "now"
        raise ManifestExpired(
            f"{manifest.name} v{manifest.version}: manifest expired at {format_time(manifest.expires)}, "
            f"before {against} ({format_time(effective)}){'; ' + note if note else ''}"
        )
    return note


def _check_kind(manifest: Manifest, state: StoreState) -> None:
    item = state.items.get(manifest.name)
    if item is not None and item.kind != manifest.kind:
        raise KindChanged(f"{manifest.name} is installed as a {item.kind}, this bundle is a {manifest.kind}")


def _check_version(manifest: Manifest, state: StoreState) -> None:
    item = state.items.get(manifest.name)
    if item is not None and manifest.version <= item.max_version:
        what = "the same version again (replay)" if manifest.version == item.max_version else "an older version (rollback)"
        raise VersionNotNewer(
            f"{manifest.name} v{manifest.version} is {what}: a bundle must be above v{item.max_version}"
        )


def _copy_artifacts(bundle: Bundle, staging: Path, progress: Optional[Progress]) -> None:
    """Step 5: stream each artifact from the bundle into staging, hashing the very bytes written."""
    for artifact in bundle.manifest.artifacts:
        in_tar = bundle.artifact_size(artifact.path)
        if in_tar != artifact.size:
            raise SizeMismatch(artifact.path, artifact.size, in_tar)
        dest = staging / "artifacts" / artifact.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        with bundle.open_artifact(artifact.path) as src, open(dest, "wb") as out:
            digest, size = sha256_stream(src, progress, sink=out)
            out.flush()
            os.fsync(out.fileno())
        if size != artifact.size:
            raise SizeMismatch(artifact.path, artifact.size, size)
        if digest != artifact.sha256:
            raise HashMismatch(artifact.path, artifact.sha256, digest)
        _crash_point("copying")


def _write_record(accepted: Accepted, staging: Path) -> None:
    (staging / "manifest.json").write_bytes(accepted.manifest.raw)
    record = {"signers": list(accepted.signers), "accepted": format_time(_now())}
    (staging / ACCEPTED_NAME).write_text(json.dumps(record, indent=2) + "\n")


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def _accept(home: Path, bundle_path: Path, staging: Path, base: Base, progress: Optional[Progress]) -> Accepted:
    """Steps 1-6, filling `staging`; raises on the first fault."""
    state = Store(home).read_state()
    with open_bundle(bundle_path) as bundle:
        manifest = bundle.manifest
        signers = TrustStore(home).verified_signers(manifest.raw, bundle.signatures)
        note = _check_expiry(manifest, _now(), state.floor)
        _check_kind(manifest, state)
        _check_version(manifest, state)
        _copy_artifacts(bundle, staging, progress)
    _crash_point("copied")
    check_binding(manifest, staging, base.sha256, base.hidden_size)
    accepted = Accepted(manifest, signers, note)
    _write_record(accepted, staging)
    return accepted


def _remove_leftovers(store: Store, state: StoreState) -> None:
    """Staging directories and unreferenced objects left by imports that were killed."""
    for staging in store.staging_dirs():
        shutil.rmtree(staging, ignore_errors=True)
    referenced = {sha for item in state.items.values() for sha in item.installed}
    for obj in store.objects.iterdir():
        if obj.name not in referenced:
            shutil.rmtree(obj, ignore_errors=True)


def _install(store: Store, accepted: Accepted, staging: Path) -> None:
    """Step 7: rename staging into the content-addressed store, then commit by replacing state.json."""
    manifest = accepted.manifest
    state = store.read_state()
    _fsync_tree(staging)
    store.objects.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = store.object_dir(manifest.sha256)
    if target.exists():  # left by an import killed before its commit: same manifest, so same content
        shutil.rmtree(target)
    os.rename(staging, target)
    fsync_dir(store.objects)
    _crash_point("stored")
    old = state.items.get(manifest.name)
    item = Item(manifest.kind, manifest.sha256, (old.installed if old else ()) + (manifest.sha256,), manifest.version)
    floor = max(state.floor, manifest.created) if state.floor else manifest.created
    new_state = replace(state.with_item(manifest.name, item), floor=floor)
    store.write_state(new_state)
    _crash_point("committed")
    _remove_leftovers(store, new_state)


def import_bundle(home: Path, bundle_path: Path, base: Base, progress: Optional[Progress] = None) -> Accepted:
    """Verify a bundle in full and install it atomically; a refusal leaves the state directory as it was."""
    require_initialised(home)
    staging = home / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    try:
        accepted = _accept(home, bundle_path, staging, base, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _install(Store(home), accepted, staging)
    return accepted


def verify_bundle(home: Path, bundle_path: Path, base: Base, progress: Optional[Progress] = None) -> Accepted:
    """Every check an import makes, with staging in a temp dir: nothing in the state directory changes."""
    require_initialised(home)
    staging = Path(tempfile.mkdtemp(prefix="appliance-verify-"))
    try:
        return _accept(home, bundle_path, staging, base, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def rollback(home: Path, name: str, base: Base) -> tuple[int, int]:
    """Re-activate the newest installed version below the active one (re-verified first); returns (from, to)."""
    require_initialised(home)
    store = Store(home)
    state = store.read_state()
    item = state.items.get(name)
    if item is None:
        raise NotFound(f"{name} is not installed")
    active = store.read_manifest(item.active).version
    earlier = [(m.version, sha) for sha in item.installed if (m := store.read_manifest(sha)).version < active]
    if not earlier:
        raise NotFound(f"no version of {name} below v{active} is still in the store")
    version, sha = max(earlier)
    verify_version(store, sha, base.sha256, base.hidden_size)
    store.write_state(state.with_item(name, replace(item, active=sha)))
    return active, version
