"""`appliance init --demo`: the demo overlay, signed and imported through the same trust chain as any other.

Two demo signer keys are made in a throwaway GnuPG home, each signs the
bundle of the committed demo overlay, their public keys are pinned (marked
as demo keys) and the bundle is imported like one off a USB stick. The
private demo keys are destroyed with the temporary directory: nobody can sign
anything else with them.
"""

from pathlib import Path

import gnupg

from ..errors import Refused
from ..journal import Journal
from ..store import ActiveBase, import_bundle
from ..store.trust_changes import pin_signer
from ..trust.bundle import create_bundle, sign_bundle
from ..trust.signatures import scratch_gpg
from ..vault import Vault
from . import OVERLAY_DIR

DEMO_NAME = "field-manual-demo"
DEMO_VERSION = 1
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


def install_demo(base: ActiveBase, vault: Vault) -> tuple[str, int, list[str]]:
    """Sign, pin and import the demo overlay; returns (name, version, demo signer fingerprints)."""
    with scratch_gpg() as (gpg, tmp):
        fingerprints = _make_signers(gpg)
        bundle = tmp / f"{DEMO_NAME}-v{DEMO_VERSION}.bundle"
        create_bundle(
            bundle,
            kind="overlay",
            name=DEMO_NAME,
            version=DEMO_VERSION,
            artifacts=[OVERLAY_DIR / "overlay.json", OVERLAY_DIR / "overlay.safetensors"],
            binds_base=base.sha256,
            expires="+365d",
            provenance={"builder": "appliance init --demo", "recipe": "appliance/demo/README.md", "source": "demo"},
        )
        for fpr in fingerprints:
            sign_bundle(bundle, fpr, Path(gpg.gnupghome))
        journal = Journal.create(vault)  # both demo pins in one session of the journal
        try:
            for fpr in fingerprints:
                pin_signer(vault, gpg.export_keys(fpr).encode(), fpr, demo=True, journal=journal)
        finally:
            journal.close()
        import_bundle(bundle, base, vault)
    return DEMO_NAME, DEMO_VERSION, fingerprints
