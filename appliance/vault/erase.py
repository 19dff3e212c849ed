"""Crypto-erase by kind: one overlay, every overlay, the journal, everything.

Each erase removes data keys from the vault first (one atomic rewrite), then deletes the
ciphertext files the vault recorded for them; the time does not depend on the data's size.
`everything` destroys the master key slot and needs no passphrase; the store's and the trust
policy's records go with it, since the vault that sealed them is gone.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ..errors import Erased, NotFound
from ..paths import JOURNAL_DIR, STORE_DIR, TRUST_DIR
from .keys import Vault, discard

# The overlay store registers here what else it must forget when overlays are erased (its
# install records, the active pointer): called as hook(vault, name), name None meaning all.
# The vault itself only knows keys and the ciphertext paths recorded with them.
OVERLAY_ERASE_HOOKS: list[Callable[[Vault, Optional[str]], None]] = []


ERASE_JOURNAL_PHRASE = "erase logs"  # typed to confirm, at `appliance erase logs` and in the chat's modal


def overlay_item(name: str, version: int) -> str:
    """The vault item id of one installed overlay version."""
    return f"overlay/{name}/{version}"


def erase_overlay(vault: Vault, name: str) -> list[str]:
    """Every installed version of overlay NAME. Returns the item ids erased."""
    items = vault.items(f"overlay/{name}/")
    if not items:
        if vault.erased_items(f"overlay/{name}/"):
            raise Erased(f"overlay {name} was already crypto-erased")
        raise NotFound(f"no overlay named {name} in the vault")
    return _erase_overlays(vault, items, name)


def erase_all_overlays(vault: Vault) -> list[str]:
    """The kill-switch wipe. Returns the item ids erased (possibly none)."""
    return _erase_overlays(vault, vault.items("overlay/"), None)


def _erase_overlays(vault: Vault, items: list[str], name: str | None) -> list[str]:
    """Destroy the keys, then let the store forget the overlay (`name` None: all of them)."""
    if items:
        vault.erase(items)
    for hook in OVERLAY_ERASE_HOOKS:
        hook(vault, name)
    return items


def erase_journal(vault: Vault) -> list[str]:
    items = vault.items("journal/")
    if not items:
        raise NotFound("no journal sessions to erase")
    vault.erase(items)
    return items


def erase_everything(home: Path) -> str:
    """Destroy the master key slot, then delete the ciphertext it protected. Returns the erase time."""
    when = Vault.erase_all(home)
    # The keys are already unrecoverable; removing the ciphertext only frees the space.
    discard(home, [home / JOURNAL_DIR, home / STORE_DIR, home / TRUST_DIR])
    return when
