"""Crypto-erase by kind: one overlay, every overlay, the journal, everything. Each calls every owner.

Order, the same for every kind: the data keys go first (the vault, one atomic table rewrite), then
the ciphertext files the vault recorded with them (`fsutil.discard`: a time that does not depend on
the data's size), then the owner's records of what was erased:

- an item of an encrypted kind (`trust.kinds`: an overlay, a control vector, a base model): its keys,
  then the store marks its versions erased and drops their objects (`store.forget_items`), so a load,
  a rollback or a replayed bundle says "erased" (exit 6); the embedded default becomes the active base
  if an erased base was; a kill's wipe erases every item of every encrypted kind;
- the journal: the journal key, under which every session's key is sealed, then the journal folder;
- everything: the master key slot (needs no passphrase), then the journal's, the store's and the
  trust policy's folders: the journal is keyless without the vault, and the store's and the
  policy's records were sealed by it (`state_files`), so nothing there can be trusted by the
  vault a later `init` makes.

The erases that promise nothing readable is left (everything, the journal, a kill's wipe) also wipe
what a crashed `$EDITOR` left in the clear (`editor_scratch.wipe`: the only plaintext prompt files).
An erase by name is resumable: killed after its keys went, the same command again finishes the
store's part (the versions are still listed) instead of answering "already crypto-erased".
"""

from pathlib import Path

from . import editor_scratch
from .errors import Erased, NotFound
from .fsutil import discard
from .journal.session_files import JOURNAL_DIR
from .store import forget_items
from .store.layout import STORE_DIR
from .trust.kinds import ENCRYPTED, KINDS
from .trust.policy import TRUST_DIR
from .vault import Vault

ERASE_JOURNAL_PHRASE = "erase logs"  # typed to confirm, at `appliance erase logs` and in the chat's modal


def erase_item(vault: Vault, kind: str, name: str) -> list[str]:
    """Every installed version of item NAME of an encrypted `kind`: its data keys, then the store's record of
    them (which a re-run finishes). Returns the key ids erased."""
    prefix, what = f"{KINDS[kind].keys}{name}/", f"{KINDS[kind].label} {name}"
    key_ids = vault.key_ids(prefix)
    if not key_ids and not vault.erased_key_ids(prefix):
        raise NotFound(f"no {what} in the vault")
    if key_ids:
        vault.erase(key_ids)
    forgotten = forget_items(vault, kind, name)  # the key ids of the versions the store listed until now
    if not key_ids and not forgotten:
        raise Erased(f"{what} was already crypto-erased")
    return key_ids or forgotten


def erase_installed(vault: Vault) -> list[str]:
    """The kill-switch wipe: every item of every encrypted kind. Returns the key ids erased (possibly none)."""
    key_ids = [key_id for kind in ENCRYPTED for key_id in vault.key_ids(kind.keys)]
    if key_ids:
        vault.erase(key_ids)
    for kind in ENCRYPTED:
        forget_items(vault, kind.name, None)  # also versions whose keys an earlier, interrupted erase destroyed
    editor_scratch.wipe(vault.home)
    return key_ids


def erase_journal(vault: Vault) -> list[str]:
    """Every journal session, in a time that does not grow with their number: the journal key (and the keys an older
    vault keeps in its table) in one write of the vault, then the journal folder, its index included, renamed out of
    sight (`fsutil.discard`). Run again after a crash in between, it finishes: the files go. Returns the key ids
    erased (none where it only finished)."""
    key_ids = vault.erase_journal()
    folder = vault.home / JOURNAL_DIR
    if not key_ids and not folder.exists():
        raise NotFound("no journal sessions to erase")
    discard(vault.home, [folder])
    editor_scratch.wipe(vault.home)
    return key_ids


def erase_everything(home: Path) -> str:
    """Destroy the master key slot, then delete the ciphertext it protected. Returns the erase time."""
    when = Vault.erase_all(home)
    # The keys are already unrecoverable; removing the ciphertext only frees the space.
    discard(home, [home / JOURNAL_DIR, home / STORE_DIR, home / TRUST_DIR])
    editor_scratch.wipe(home)
    return when
