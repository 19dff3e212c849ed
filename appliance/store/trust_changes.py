"""Changing the trust policy: each change made through the vault's seal and journalled.

Pinning or unpinning a signer and setting the threshold need the unlocked vault (the policy and
the keyring are sealed state, `state_files`), and each change is written to the journal as a
`trust-change` record (in its own session, or in the caller's when several changes belong
together): who was pinned or unpinned, the threshold before and after. The change lands first; if the journal cannot take the record, the command fails loudly
(`JournalWriteFailed`, exit 3) and the change stands, visible in `trust list`.

Lowering the threshold or unpinning a signer needs the passphrase but no signed policy bundle:
on an air-gapped box the passphrase holder is already the operator who can wipe and re-initialise
everything, so k-of-n signatures over a policy change would not stop them, and would lock an
operator out when signers lose their keys. docs/procedures.md states this.
"""

from typing import Optional

from ..journal import Journal
from ..vault import Vault
from .layout import Store


def _record(vault: Vault, journal: Optional[Journal], **change) -> None:
    if journal is not None:
        journal.append("trust-change", **change)
        return
    own = Journal.create(vault)
    try:
        own.append("trust-change", **change)
    finally:
        own.close()


def pin_signer(vault: Vault, key_data: bytes, fingerprint: str, demo: bool = False, journal: Optional[Journal] = None) -> str:
    """Pin the signer whose public key is `key_data` (rule 1 of `trust.policy`); returns its fingerprint."""
    trust = Store.unlocked(vault).trust()
    before = trust.policy()
    fpr = trust.add(key_data, fingerprint, demo=demo)
    after = trust.policy()
    _record(
        vault,
        journal,
        action="pin",
        fingerprint=fpr,
        demo=demo,
        threshold=after.threshold,
        signers_before=list(before.signers),
        signers_after=list(after.signers),
    )
    return fpr


def unpin_signer(vault: Vault, fingerprint: str) -> str:
    trust = Store.unlocked(vault).trust()
    before = trust.policy()
    fpr = trust.remove(fingerprint)
    after = trust.policy()
    _record(
        vault,
        None,
        action="unpin",
        fingerprint=fpr,
        threshold=after.threshold,
        signers_before=list(before.signers),
        signers_after=list(after.signers),
    )
    return fpr


def set_threshold(vault: Vault, k: int) -> tuple[int, int]:
    """Returns (old, new) threshold."""
    trust = Store.unlocked(vault).trust()
    old = trust.policy().threshold
    trust.set_threshold(k)
    _record(vault, None, action="threshold", threshold_before=old, threshold_after=k)
    return old, k
