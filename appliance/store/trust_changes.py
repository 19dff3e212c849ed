"""Changing the trust policy: each change made through the vault's seal and journalled.

Pinning or unpinning a signer and setting the threshold need the unlocked vault (the policy and
the keyring are sealed state, `state_files`), and each change is written to the journal as a
`trust-change` record (in its own session, or in the caller's when several changes belong
together): who was pinned or unpinned, the threshold before and after. The change lands first; if the journal cannot take the record, the command fails loudly
(`JournalWriteFailed`, exit 3) and the change stands, visible in `trust list`.

While demo signers are pinned, production changes are refused (`trust.policy` rule 7);
`unpin_demo_signers` removes them all at once.

Lowering the threshold or unpinning a signer needs the passphrase but no signed policy bundle:
on an air-gapped box the passphrase holder is already the operator who can wipe and re-initialise
everything, so k-of-n signatures over a policy change would not stop them, and would lock an
operator out when signers lose their keys. docs/procedures.md states this.
"""

from collections.abc import Collection
from typing import Optional

from ..errors import NotFound
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


def pin_signer(
    vault: Vault, key_data: bytes, fingerprint: str, scope: Optional[Collection[str]] = None, journal: Optional[Journal] = None
) -> str:
    """Pin the signer whose public key is `key_data` (rule 1 of `trust.policy`); returns its fingerprint.

    With a `scope` (`trust.policy.item_id`s), a demo signer that counts only for those items (rule 6)."""
    trust = Store.unlocked(vault).trust()
    before = trust.policy()
    fpr = trust.add(key_data, fingerprint, scope)
    after = trust.policy()
    scoped = {} if scope is None else {"scope": sorted(scope)}
    _record(
        vault,
        journal,
        action="pin",
        fingerprint=fpr,
        demo=scope is not None,
        **scoped,
        threshold=after.threshold,
        signers_before=list(before.signers),
        signers_after=list(after.signers),
    )
    return fpr


def unpin_signers(vault: Vault, fingerprints: Collection[str]) -> tuple[str, ...]:
    """Unpin the signers (all, or none when one is not pinned); one `trust-change` record each, in one session."""
    trust = Store.unlocked(vault).trust()
    before = trust.policy()
    fprs = trust.remove(fingerprints)
    signers = list(before.signers)
    journal = Journal.create(vault)
    try:
        for fpr in fprs:  # each record one step, as if they were unpinned one by one
            remaining = [f for f in signers if f != fpr]
            _record(
                vault,
                journal,
                action="unpin",
                fingerprint=fpr,
                threshold=before.threshold,
                signers_before=signers,
                signers_after=remaining,
            )
            signers = remaining
    finally:
        journal.close()
    return fprs


def unpin_demo_signers(vault: Vault) -> tuple[str, ...]:
    """Unpin every demo signer (the key ceremony's first step); the demo items they admitted stay installed."""
    demo = Store.unlocked(vault).trust().policy().demo
    if not demo:
        raise NotFound("no demo signer is pinned")
    return unpin_signers(vault, demo)


def set_threshold(vault: Vault, k: int) -> tuple[int, int]:
    """Returns (old, new) threshold."""
    trust = Store.unlocked(vault).trust()
    old = trust.policy().threshold
    trust.set_threshold(k)
    _record(vault, None, action="threshold", threshold_before=old, threshold_after=k)
    return old, k
