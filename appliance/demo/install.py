"""`appliance init --demo`: the demo items, signed and imported through the same trust chain as any other.

Two demo signer keys are made in a throwaway GnuPG home in memory-only storage
(`key_storage`: /dev/shm where it is a memory filesystem; else /tmp, and the
reason is said), each signs one bundle per demo item (`DEMO_ITEMS`: the
committed demo overlay, and a control vector of its own concept), their public
keys are pinned as demo keys scoped to exactly those items (`trust.policy` rule
6: their signatures count for no other name or kind) and the bundles are
imported like ones off a USB stick, in the table's order. The private demo keys
are destroyed with the temporary directory. Demo signers never join production
signers (`trust.policy` rule 7): with a production signer pinned, nothing is
installed (`production_pinned`). The demo overlay stays the active overlay; the
demo control vector is installed beside it, off until switched on.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import gnupg

from ..errors import Refused
from ..journal import Journal
from ..store import ActiveBase, import_bundle
from ..store.layout import Store
from ..store.trust_changes import pin_signer
from ..trust.bundle import create_bundle, sign_bundle
from ..trust.kinds import KINDS
from ..trust.policy import item_id
from ..trust.signatures import scratch_gpg
from ..vault import Vault
from . import CONTROL_DIR, OVERLAY_DIR


@dataclass(frozen=True)
class DemoItem:
    kind: str  # a kind whose files `trust.kinds.KINDS` names
    name: str
    directory: Path  # holds exactly those files
    version: int = 1

    @property
    def artifacts(self) -> list[Path]:
        return [self.directory / name for name in sorted(KINDS[self.kind].files)]


DEMO_ITEMS = (
    DemoItem("overlay", "field-manual-demo", OVERLAY_DIR),
    DemoItem("control-vector", "radio-operator", CONTROL_DIR),
)
DEMO_NAME = DEMO_ITEMS[0].name  # the demo overlay, the active one after `init --demo`
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}
MEMORY_DIR = Path("/dev/shm")
DEMO_SIGNERS = ("Appliance demo signer 1 (DEMO KEY) <demo-1@appliance.invalid>",
                "Appliance demo signer 2 (DEMO KEY) <demo-2@appliance.invalid>")  # fmt: skip


def _make_signers(gpg: gnupg.GPG) -> list[str]:
    fingerprints = []
    for uid in DEMO_SIGNERS:
        key = gpg.gen_key(gpg.gen_key_input(key_type="EDDSA", key_curve="ed25519", key_usage="sign",
                                             name_real=uid.split(" <")[0], name_email=uid.split("<")[1].rstrip(">"),
                                             expire_date="1y", no_protection=True))  # fmt: skip
        if not key.fingerprint:
            raise Refused(f"gpg could not make a demo key: {key.stderr.strip().splitlines()[-1:]}")
        fingerprints.append(key.fingerprint)
    return fingerprints


def _bundle(item: DemoItem, tmp: Path, base: ActiveBase, gpg: gnupg.GPG, fingerprints: list[str]) -> Path:
    bundle = tmp / f"{item.name}-v{item.version}.bundle"
    create_bundle(
        bundle,
        kind=item.kind,
        name=item.name,
        version=item.version,
        artifacts=item.artifacts,
        binds_base=base.sha256,
        expires="+365d",
        provenance={"builder": "appliance init --demo", "recipe": "appliance/demo/README.md", "source": "demo"},
    )
    for fpr in fingerprints:
        sign_bundle(bundle, fpr, Path(gpg.gnupghome))
    return bundle


def _filesystem(directory: Path, mounts: str) -> str:
    """The type of the filesystem mounted at `directory`, from /proc/self/mounts' text ("" when nothing is)."""
    types = [fields[2] for line in mounts.splitlines() if len(fields := line.split()) > 2 and fields[1] == str(directory)]
    return types[-1] if types else ""  # the last mount over a directory is the one in effect


def key_storage(mounts_file: Path = Path("/proc/self/mounts")) -> tuple[Path, str]:
    """Where the demo's private keys are made: (directory, why it is not memory-only storage, or "")."""
    try:
        fstype = _filesystem(MEMORY_DIR, mounts_file.read_text())
    except OSError as e:
        fstype, why = "", f"{mounts_file} is unreadable ({e.strerror})"
    else:
        why = f"{MEMORY_DIR} is {'a ' + fstype + ' filesystem' if fstype else 'not a mount point'}, not memory-only"
    if fstype in MEMORY_FILESYSTEMS and os.access(MEMORY_DIR, os.W_OK | os.X_OK):
        return MEMORY_DIR, ""
    if fstype in MEMORY_FILESYSTEMS:
        why = f"{MEMORY_DIR} is not writable"
    return Path("/tmp"), f"{why}: the demo keys were made under /tmp, which may be on disk"


def production_pinned(vault: Vault) -> tuple[str, ...]:
    """The production signers pinned now: while there is one, no demo signer is pinned (`trust.policy` rule 7)."""
    return Store.unlocked(vault).trust().policy().production


@dataclass(frozen=True)
class DemoInstalled:
    signers: tuple[str, ...]  # the demo signers' fingerprints
    storage_note: str  # "" when their private keys lived in memory only, else why not


def install_demo(base: ActiveBase, vault: Vault, items: tuple[DemoItem, ...] = DEMO_ITEMS) -> DemoInstalled:
    """Sign, pin (scoped to `items`) and import `items`, with one pair of demo keys made for this run."""
    where, note = key_storage()
    scope = [item_id(item.kind, item.name) for item in items]
    with scratch_gpg(under=where) as (gpg, tmp):
        fingerprints = _make_signers(gpg)
        bundles = [_bundle(item, tmp, base, gpg, fingerprints) for item in items]
        journal = Journal.create(vault)  # both demo pins in one session of the journal
        try:
            for fpr in fingerprints:
                pin_signer(vault, gpg.export_keys(fpr).encode(), fpr, scope=scope, journal=journal)
        finally:
            journal.close()
        for bundle in bundles:
            import_bundle(bundle, base, vault)
    return DemoInstalled(tuple(fingerprints), note)
