"""Importing a bundle, in the verification order of docs/design.md; every step refuses with exit 3 and one line.

1. shape and size limits of the tar, then the manifest (`trust.bundle_reader`);
2. signatures and threshold (`trust.policy.TrustRoot.verified_signers`), against the
   sealed policy and keyring (`state_files`: changed outside the appliance, they refuse),
   judged at max(now, floor) and refused while the clock is behind the floor (`trust.signatures`);
3. expiry against the time floor, `created` not in the future; and
4. an item keeps its kind, the version is above every version ever accepted for that name,
   and what its kind asks of the manifest alone: steps 3 and 4 are one pure decision on values,
   `decision.decide` (manifest, signers, store state, now -> accepted or the refusal);
5. room on the state directory's disk for everything the import writes, counted before
   a byte is written (`NoRoomForImport`); then each artifact's size and SHA-256, hashed
   while it is streamed from the bundle into staging: the bytes verified are the bytes kept. An overlay's
   (a control vector's, a base model's) are encrypted on the way (`at_rest`) under a fresh
   data key that exists only in memory until step 7: no plaintext overlay byte reaches the disk;
6. binding: an overlay or a control vector is bound to the active base and admitted by its
   loader (decrypted into memory from staging, so the ciphertext kept is checked too; a control
   vector's blocks must be blocks the base has);
   a base model is one GGUF (plus text files) that a limited child process
   loads in llama.cpp from a sealed memfd, filled in step 5 from the buffer
   that was hashed and encrypted (`bases.StagedProbe`, `runtime.probe`);
   an image's artifacts are the layout its signed record describes (`trust.image_rules`);
7. install: the data key recorded in the vault, staging renamed into
   `store/objects/<manifest sha256>`, its accepted record sealed (the signers that counted; a
   base's GGUF shape, read from the header the probe passed, for its starts), then
   `store/state.json` replaced and sealed, the commit point (files and
   directories fsynced).

Before step 7 nothing outside the staging directory is written (the vault's
key-slot file included), and staging is removed on any refusal. A kill between
the key's record and the commit leaves an orphan key: harmless (its version is
not installed, its ciphertext is unreferenced) and erased by the next
successful import, or replaced if that import is the same version again.
For the crash-safety tests only,
`APPLIANCE_TEST_CRASH_AT=<point>` SIGKILLs the process at one of
`CRASH_POINTS`; nothing else reads it.
"""

import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import Erased, NotFound, Refused, SizeMismatch
from ..fsutil import fsync_dir
from ..state import require_initialised
from ..trust.bundle_reader import Bundle, open_bundle
from ..trust.hashing import Progress
from ..trust.kinds import ENCRYPTED, KINDS
from ..utc import now
from ..vault import Vault
from .active import ActiveBase, check_binding, verify_version, versions_text
from .at_rest import Sealing, data_key_id, write_artifact
from .bases import StagedProbe
from .decision import Accepted, decide
from .layout import STAGING_PREFIX, AcceptedRecord, Item, Store, StoreDamaged, StoreState

CRASH_POINTS = ("copying", "copied", "keyed", "stored", "committed")


class NoRoomForImport(Refused):
    """The state directory's disk cannot hold what an import would write: refused before writing any of it."""


def _crash_point(point: str) -> None:
    if os.environ.get("APPLIANCE_TEST_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


ROOM_RESERVE = 16 << 20  # beside the artifacts: the manifest, signatures, and the vault, state and journal rewritten


def _check_room(bundle: Bundle, staging: Path, sealing: Sealing) -> None:
    """Before step 5 writes a byte: the disk under staging (the state directory's) holds all of it, or exit 3."""
    needed = sum(sealing.stored_size(a) for a in bundle.manifest.artifacts) + len(bundle.manifest.raw) + ROOM_RESERVE
    disk = os.statvfs(staging)
    free = disk.f_bavail * disk.f_frsize
    if needed > free:
        raise NoRoomForImport(
            f"{bundle.manifest.name} v{bundle.manifest.version} needs {needed:,} bytes on the disk of {staging.parent},"
            f" {free:,} are free: nothing was written (free some space and import again)"
        )


def _copy_artifacts(bundle: Bundle, staging: Path, sealing: Sealing, progress: Optional[Progress]) -> Optional[StagedProbe]:
    """Step 5: stream each artifact from the bundle into staging, hashing the very bytes written (or encrypted).

    A base's GGUF also goes, from the buffer just hashed, into the memfd of its probe (step 6), whose child
    starts first and loads the GGUF as soon as its hash is checked, while the encryption and the writes
    finish: returned for its verdict (None for other kinds), so the probe needs no second pass.
    """
    _check_room(bundle, staging, sealing)
    probe = StagedProbe(bundle.manifest, sealing.key_id) if KINDS[bundle.manifest.kind].probed else None
    try:
        for artifact in bundle.manifest.artifacts:
            in_tar = bundle.artifact_size(artifact.path)
            if in_tar != artifact.size:
                raise SizeMismatch(artifact.path, artifact.size, in_tar)
            dest = staging / "artifacts" / artifact.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            probed = probe if probe is not None and artifact is probe.artifact else None
            with bundle.open_artifact(artifact.path) as src:
                write_artifact(src, dest, artifact, sealing, progress, probed)
            _crash_point("copying")
        return probe
    except BaseException:
        if probe is not None:
            probe.cancel()
        raise


def _write_manifest(accepted: Accepted, staging: Path) -> None:
    (staging / "manifest.json").write_bytes(accepted.manifest.raw)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def _accept(
    store: Store, bundle_path: Path, staging: Path, base: ActiveBase, progress: Optional[Progress]
) -> tuple[Accepted, Sealing, AcceptedRecord]:
    """Steps 1-6, filling `staging`; raises on the first fault. The caller zeroes the returned sealing's key."""
    state = store.read_state()
    with open_bundle(bundle_path) as bundle:
        manifest = bundle.manifest
        signers = store.trust().verified_signers(manifest, bundle.signatures, state.floor)
        accepted = decide(manifest, signers, state, now())
        sealing = Sealing.fresh(manifest)
        try:
            probe = _copy_artifacts(bundle, staging, sealing, progress)
            _crash_point("copied")
            shape = probe.verdict() if probe is not None else None
            check_binding(manifest, staging, sealing, base)
        except BaseException:
            sealing.zeroize()
            raise
    _write_manifest(accepted, staging)
    return accepted, sealing, AcceptedRecord(accepted.signers, shape)


def _remove_leftovers(store: Store, state: StoreState, vault: Vault) -> None:
    """Staging directories, unreferenced objects and orphan data keys left by imports that were killed."""
    for staging in store.staging_dirs():
        shutil.rmtree(staging, ignore_errors=True)
    referenced = {sha for item in state.items.values() for sha in item.installed}
    unreferenced = [obj.name for obj in store.objects.iterdir() if obj.name not in referenced]
    for obj in store.forget_objects(unreferenced):
        shutil.rmtree(obj, ignore_errors=True)
    try:
        installed = {
            data_key_id(item.kind, name, store.read_manifest(sha).version)
            for name, item in state.items.items()
            if KINDS[item.kind].encrypted
            for sha in item.installed
        }
    except StoreDamaged:
        return  # unsure what is installed: keep every key (an orphan is harmless, a lost key is not)
    orphans = [i for kind in ENCRYPTED for i in vault.key_ids(kind.keys) if i not in installed]
    if orphans:
        vault.erase(orphans)


def _install(store: Store, vault: Vault, accepted: Accepted, record: AcceptedRecord, sealing: Sealing, staging: Path) -> None:
    """Step 7: record the data key, rename staging into the content-addressed store, commit by replacing state.json."""
    manifest = accepted.manifest
    state = store.read_state()
    _fsync_tree(staging)
    # The key is durable before the commit point: an installed version is never left without its key.
    sealing.record(vault)
    _crash_point("keyed")
    store.objects.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = store.object_dir(manifest.sha256)
    if target.exists():  # left by an import killed before its commit: same manifest, so same content
        shutil.rmtree(target)
    os.rename(staging, target)
    fsync_dir(store.objects)
    store.write_accepted(manifest.sha256, record, now())
    _crash_point("stored")
    old = state.items.get(manifest.name)
    installed = (old.installed if old else ()) + (manifest.sha256,)
    item = (
        replace(old, active=manifest.sha256, installed=installed, max_version=manifest.version)
        if old
        else Item(manifest.kind, manifest.sha256, installed, manifest.version)
    )
    floor = max(state.floor, manifest.created) if state.floor else manifest.created
    new_state = replace(state.with_item(manifest.name, item).selecting(manifest.name), floor=floor)  # the newest is selected
    store.write_state(new_state)
    _crash_point("committed")
    _remove_leftovers(store, new_state, vault)


def import_bundle(bundle_path: Path, base: ActiveBase, vault: Vault, progress: Optional[Progress] = None) -> Accepted:
    """Verify a bundle in full and install it atomically; a refusal leaves the state directory as it was."""
    require_initialised(vault.home)
    store = Store.unlocked(vault)
    staging = vault.home / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    try:
        accepted, sealing, record = _accept(store, bundle_path, staging, base, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _install(store, vault, accepted, record, sealing, staging)
    except BaseException:
        # Before the commit nothing is installed: staging (or the object it became) goes. A data
        # key already recorded stays an orphan, harmless and erased by the next import.
        shutil.rmtree(staging, ignore_errors=True)
        if accepted.manifest.sha256 not in {sha for item in store.read_state().items.values() for sha in item.installed}:
            shutil.rmtree(store.object_dir(accepted.manifest.sha256), ignore_errors=True)
        raise
    finally:
        sealing.zeroize()
    return accepted


def verify_bundle(bundle_path: Path, base: ActiveBase, vault: Vault, progress: Optional[Progress] = None) -> Accepted:
    """Every check an import makes, with staging in a temp dir: nothing in the state directory changes.

    An overlay is encrypted into that temp dir under a throwaway key that is never recorded, so no
    plaintext reaches the disk here either. The vault is needed to read the sealed policy and state.
    """
    require_initialised(vault.home)
    staging = Path(tempfile.mkdtemp(prefix="appliance-verify-"))
    try:
        accepted, sealing, _ = _accept(Store.unlocked(vault), bundle_path, staging, base, progress)
        sealing.zeroize()
        return accepted
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def rollback(name: str, base: ActiveBase, vault: Vault) -> tuple[int, int]:
    """Re-activate the newest installed version below the active one (re-verified first); returns (from, to).

    A crypto-erased version cannot come back: exit 6 when the version to return to was erased.
    """
    require_initialised(vault.home)
    store = Store.unlocked(vault)
    state = store.read_state()
    item = state.items.get(name)
    if item is None:
        raise NotFound(f"{name} is not installed")
    if item.active is None:
        raise Erased(f"every version of {name} was crypto-erased ({versions_text(item.erased)}): nothing to roll back to")
    active = store.read_manifest(item.active).version
    earlier = [(m.version, sha) for sha in item.installed if (m := store.read_manifest(sha)).version < active]
    if not earlier:
        erased = tuple(v for v in item.erased if v < active)
        if erased:
            raise Erased(f"{name} {versions_text(erased)} was crypto-erased: it cannot be rolled back to")
        raise NotFound(f"no version of {name} below v{active} is still in the store")
    version, sha = max(earlier)
    verify_version(store, sha, vault, base)
    store.write_state(state.with_item(name, replace(item, active=sha)))
    return active, version
