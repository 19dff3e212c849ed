"""`appliance base list | use NAME | use embedded` and `appliance erase base NAME`. Thin shells over store.bases."""

from pathlib import Path
from typing import Optional

import click

from ..store.bases import list_bases, use_base
from ..utc import format_time
from .output import Shown, say
from .unlocking import passphrase_option, unlocked
from .vault_commands import erase_every_version


@click.group()
def base() -> None:
    """Base models: the embedded default and those imported as signed bundles (encrypted at rest)."""


@base.command("list")
@passphrase_option
def base_list(passphrase_file: Optional[Path]) -> None:
    """The embedded default and every imported base: version, size, SHA-256 prefix, signers, expiry, which is active."""
    with unlocked(passphrase_file) as vault:
        rows = list_bases(vault)
    for r in rows:
        mark = "*" if r.active else " "
        if r.version is None:
            say(f"{mark} {r.name}  crypto-erased (v{', v'.join(map(str, r.erased))})")
            continue
        expires = format_time(r.expires) if r.expires else "never"
        say(f"{mark} {r.name}  v{r.version}  {r.size / 1e6:.1f} MB  sha256 {r.sha256[:16]}  {r.origin}  expires {expires}"
            + ("  (active)" if r.active else ""))  # fmt: skip


@base.command("use")
@click.argument("name")
@passphrase_option
def base_use(name: str, passphrase_file: Optional[Path]) -> None:
    """Make NAME the active base (`embedded`: the built-in default), verified in full first (journalled)."""
    with unlocked(passphrase_file) as vault:
        model, seconds = use_base(vault, name, Shown())
    say(f"active base: {model.name} v{model.version} ({model.origin}), sha256 {model.sha256} verified ({seconds:.2f} s)")


@click.command("base")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_base_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of base model NAME (the embedded default becomes active if NAME was)."""
    erase_every_version("base-model", name, yes, passphrase_file)
