"""`appliance init --demo`: the demo items, signed and imported through the same trust chain as any other.

Two demo signer keys are made in a throwaway GnuPG home, each signs one
bundle per demo item (`DEMO_ITEMS`: the committed demo overlay, and a control
vector of its own concept), their public keys are pinned (marked as demo keys)
and the bundles are imported like ones off a USB stick, in the table's order.
The private demo keys are destroyed with the temporary directory: nobody can
sign anything else with them. The demo overlay stays the active overlay; the
demo control vector is installed beside it, off until switched on.
"""

from dataclasses import dataclass
from pathlib import Path

import gnupg

from ..errors import Refused
from ..journal import Journal
from ..store import ActiveBase, import_bundle
from ..store.trust_changes import pin_signer
from ..trust.bundle import create_bundle, sign_bundle
from ..trust.manifest import FILES_OF_KIND
from ..trust.signatures import scratch_gpg
from ..vault import Vault
from . import CONTROL_DIR, OVERLAY_DIR


@dataclass(frozen=True)
class DemoItem:
    kind: str  # a manifest kind whose files `trust.manifest.FILES_OF_KIND` names
    name: str
    directory: Path  # holds exactly those files
    version: int = 1

    @property
    def artifacts(self) -> list[Path]:
        return [self.directory / name for name in sorted(FILES_OF_KIND[self.kind])]


DEMO_ITEMS = (
    DemoItem("overlay", "field-manual-demo", OVERLAY_DIR),
    DemoItem("control-vector", "radio-operator", CONTROL_DIR),
)
DEMO_NAME = DEMO_ITEMS[0].name  # the demo overlay, the active one after `init --demo`
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


def install_demo(base: ActiveBase, vault: Vault, items: tuple[DemoItem, ...] = DEMO_ITEMS) -> list[str]:
    """Sign, pin and import `items` (one signing run, one pair of demo keys); returns the demo signer fingerprints."""
    with scratch_gpg() as (gpg, tmp):
        fingerprints = _make_signers(gpg)
        bundles = [_bundle(item, tmp, base, gpg, fingerprints) for item in items]
        journal = Journal.create(vault)  # both demo pins in one session of the journal
        try:
            for fpr in fingerprints:
                pin_signer(vault, gpg.export_keys(fpr).encode(), fpr, demo=True, journal=journal)
        finally:
            journal.close()
        for bundle in bundles:
            import_bundle(bundle, base, vault)
    return fingerprints
