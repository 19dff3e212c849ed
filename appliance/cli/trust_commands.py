"""The trust chain's commands: `trust`, `bundle`, `update`, `verify`. Thin shells over trust/ and store/."""

from datetime import datetime
from pathlib import Path

import click

from ..store import describe_installed, verify_installed
from ..store.active import VerificationFailed, floor_text, versions_text
from ..store.at_rest import Check
from ..store.bases import active_base, active_model, active_sha256, close_model
from ..store.importer import import_bundle, rollback, verify_bundle
from ..store.layout import Store
from ..store.trust_changes import pin_signer, set_threshold, unpin_demo_signers, unpin_signers
from ..trust.bundle import create_bundle, sign_bundle
from ..trust.kinds import IMAGE, KINDS
from ..trust.policy import demo_mark
from ..utc import format_time, parse_time
from ..vault import Vault
from .image_commands import load_imported
from .output import Shown, say, warn
from .unlocking import passphrase_option, unlocked

DEMO_PINNED = "demo signers pinned: they admit only the demo items (remove them: appliance trust remove-demo)"


# -- trust -----------------------------------------------------------------


@click.group()
def trust() -> None:
    """Pinned signer keys and the k-of-n threshold (sealed in the vault: every command needs the passphrase)."""


@trust.command("add")
@click.argument("keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fingerprint", required=True, help="The 40-hex fingerprint, as it reached you out of band.")
@passphrase_option
def trust_add(keyfile: Path, fingerprint: str, passphrase_file: Path | None) -> None:
    """Pin the signer whose public key is in KEYFILE, if its fingerprint is the one typed (journalled)."""
    key_data = keyfile.read_bytes()
    with unlocked(passphrase_file) as vault:
        fpr = pin_signer(vault, key_data, fingerprint)
    say(f"pinned {fpr}")


@trust.command("list")
@passphrase_option
def trust_list(passphrase_file: Path | None) -> None:
    """Pinned signers and the threshold."""
    with unlocked(passphrase_file) as vault:
        store = Store.unlocked(vault).trust()
        policy, described = store.policy(), store.describe()
    say(f"threshold: {policy.threshold} of {len(policy.signers)} pinned signers")
    if policy.demo:
        say(DEMO_PINNED)
    for fpr, summary in described.items():
        say(f"{fpr}  {summary}")


@trust.command("remove")
@click.argument("fingerprint")
@passphrase_option
def trust_remove(fingerprint: str, passphrase_file: Path | None) -> None:
    """Unpin a signer and drop its key (journalled)."""
    with unlocked(passphrase_file) as vault:
        (fpr,) = unpin_signers(vault, [fingerprint])
    say(f"removed {fpr}")


@trust.command("remove-demo")
@passphrase_option
def trust_remove_demo(passphrase_file: Path | None) -> None:
    """Unpin every demo signer (`init --demo`'s), the key ceremony's first step; the demo items stay installed (journalled)."""
    with unlocked(passphrase_file) as vault:
        removed = unpin_demo_signers(vault)
    for fpr in removed:
        say(f"removed demo signer {fpr}")


@trust.command("threshold")
@click.argument("k", type=click.IntRange(1, 16))
@passphrase_option
def trust_threshold(k: int, passphrase_file: Path | None) -> None:
    """Require K good signatures from distinct pinned signers (journalled)."""
    with unlocked(passphrase_file) as vault:
        old, new = set_threshold(vault, k)
    say(f"threshold: {new} (was {old})")


# -- bundle (build station) --------------------------------------------------


@click.group()
def bundle() -> None:
    """Create, sign and verify update bundles."""


@bundle.command("create")
@click.option("--kind", type=click.Choice([k for k in KINDS if k != IMAGE.name]), required=True)  # an image: `image pack`
@click.option("--name", required=True)
@click.option("--version", type=click.IntRange(1), required=True)
@click.option(
    "--artifact", "artifacts", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--binds-base", default=None, help="SHA-256 of the base an overlay or control vector is bound to.")
@click.option("--created", default=None, help="YYYY-MM-DDTHH:MM:SSZ (default: now).")
@click.option("--expires", default=None, help="YYYY-MM-DDTHH:MM:SSZ or +Nd (default: +180d).")
@click.option("--builder", default=None)
@click.option("--recipe", default=None)
@click.option("--dataset-sha256", default=None)
@click.option("--source", default=None)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def bundle_create(kind, name, version, artifacts, binds_base, created, expires, builder, recipe, dataset_sha256, source, out):
    """Hash the artifacts, write the manifest, pack an unsigned bundle."""
    provenance = {
        k: v for k, v in dict(builder=builder, recipe=recipe, dataset_sha256=dataset_sha256, source=source).items() if v
    }
    manifest = create_bundle(
        out,
        kind=kind,
        name=name,
        version=version,
        artifacts=list(artifacts),
        binds_base=binds_base,
        created=_time_option("--created", created),
        expires=expires,
        provenance=provenance,
        steps=Shown(),
    )
    say(f"created {out}: {manifest.name} v{manifest.version}, manifest sha256 {manifest.sha256}")


def _time_option(name: str, text: str | None) -> datetime | None:
    try:
        return parse_time(text) if text else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=name) from None


@bundle.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", required=True, help="Fingerprint or key id of the signing key.")
@click.option("--gnupghome", type=click.Path(file_okay=False, path_type=Path), default=None, help="The signer's GnuPG home.")
def bundle_sign(file: Path, key: str, gnupghome: Path | None) -> None:
    """Add a detached signature over the exact manifest bytes."""
    say(f"signed {file} as {sign_bundle(file, key, gnupghome, Shown())}")


@bundle.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@passphrase_option
def bundle_verify(file: Path, passphrase_file: Path | None) -> None:
    """Every check an import makes, against this appliance's sealed trust store; installs nothing."""
    with unlocked(passphrase_file) as vault:
        with Shown().step("verify", _size(file)) as advance:
            accepted = verify_bundle(file, active_base(vault), vault, advance)
    _report(accepted, "verified")


def _size(file: Path) -> int:
    return file.stat().st_size if file.is_file() else 0


def _report(accepted, verb: str) -> None:
    m = accepted.manifest
    say(f"{verb} {m.kind} {m.name} v{m.version}, signed by {', '.join(accepted.signers)}, expires {format_time(m.expires)}")
    if accepted.clock_note:
        warn(f"warning: {accepted.clock_note}")


# -- update (appliance) ------------------------------------------------------


@click.group()
def update() -> None:
    """Import signed bundles, list them, roll back."""


@update.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@passphrase_option
def update_import(file: Path, passphrase_file: Path | None) -> None:
    """Verify a bundle in full and install it atomically (an overlay encrypted at rest: needs the passphrase)."""
    with unlocked(passphrase_file) as vault:  # locked: exit 4 before the bundle is even opened
        with Shown().step("import", _size(file)) as advance:
            accepted = import_bundle(file, active_base(vault), vault, advance)
        _report(accepted, "installed")
        if accepted.manifest.kind == "image":
            load_imported(vault, accepted)  # into container storage where skopeo is (appliance/image/storage.py)


@update.command("list")
@passphrase_option
def update_list(passphrase_file: Path | None) -> None:
    """Installed items, their versions and the active one."""
    with unlocked(passphrase_file) as vault:
        _, items = describe_installed(vault)
        base_sha = active_sha256(vault)
    for item in items:
        erased = f"  crypto-erased {versions_text(item.erased_versions)}" if item.erased_versions else ""
        if item.provenance is None:
            say(f"{item.name}  {item.kind}  erased{erased}")
        else:
            installed = versions_text(item.installed_versions)
            say(
                f"{item.name}  {item.kind}{_active(item)}  active v{item.provenance.version}  installed {installed}{erased}"
                f"{_bound(item, base_sha)}"
            )


@update.command("rollback")
@click.argument("name")
@passphrase_option
def update_rollback(name: str, passphrase_file: Path | None) -> None:
    """Re-activate the previous version of NAME that is still in the store (re-verified: needs the passphrase)."""
    with unlocked(passphrase_file) as vault:
        old, new = rollback(name, active_base(vault), vault)
    say(f"{name}: v{old} -> v{new}")


# -- verify ----------------------------------------------------------------


@click.command("verify")
@passphrase_option
def verify_cmd(passphrase_file: Path | None) -> None:
    """Re-verify the base and every installed version (overlays decrypted in memory: needs the passphrase)."""
    with unlocked(passphrase_file) as vault:
        model = active_model(vault, Check.SHA256, Shown())  # refused (exit 3) here if the active base fails
        close_model(model)
        say(f"base {model.name} v{model.version} ({model.origin}) sha256 {model.sha256}: ok")
        results = verify_installed(active_base(vault), vault, Shown())
    for label, fault in results:
        say(f"{label}: {fault or 'ok'}")
    failed = [f"{label}: {fault}" for label, fault in results if fault]
    if failed:
        raise VerificationFailed(f"{len(failed)} installed version(s) failed verification: {failed[0]}")


def _bound(item, base_sha: str) -> str:
    """For an overlay or control vector made for another base than the active one: why it is inactive."""
    binds = item.provenance.binds_base if item.provenance else None
    if not KINDS[item.kind].binds_base or binds is None or binds == base_sha:
        return ""
    return f"  inactive: bound to base {binds[:16]}, active base is {base_sha[:16]}"


def _active(item) -> str:
    """Which of the two the runtime loads: the active overlay, and the active control vector beside it."""
    if item.is_active_overlay:
        return " (active overlay)"
    return " (active control vector)" if item.is_active_control else ""


def status_lines(vault: Vault) -> list[str]:
    """The trust part of `appliance status`: each installed item, its signers, expiry, and the time floor."""
    store_state, items = describe_installed(vault)
    base_sha = active_sha256(vault)
    policy = Store.unlocked(vault).trust().policy()
    lines = [
        f"trust:   {policy.threshold} of {len(policy.signers)} pinned signers must sign",
        *([f"         {DEMO_PINNED}"] if policy.demo else []),
        f"time floor: {floor_text(store_state)}",
    ]
    if not any(item.kind == "overlay" for item in items):
        lines.append("overlay: none installed")
    if not any(item.kind == "control-vector" for item in items):
        lines.append("control-vector: none installed")
    for item in items:
        p = item.provenance
        active = _active(item)
        if p is None:
            lines.append(f"{item.kind}: {item.name}{active} crypto-erased ({versions_text(item.erased_versions)})")
            continue
        lines.append(f"{p.kind}: {p.name} v{p.version}{active}, manifest sha256 {p.manifest_sha256}{_bound(item, base_sha)}")
        signers = ", ".join(f + demo_mark(f, p.demo_signers) for f in p.signers)
        lines.append(f"         signed by {signers}; expires {format_time(p.expires)}")
        if item.erased_versions:
            lines.append(f"         crypto-erased earlier: {versions_text(item.erased_versions)}")
    return lines
