"""What the store forgets when overlays (or base models and control vectors, the same way) are crypto-erased
(`appliance.erase` calls it).

The vault destroys the keys first (and the ciphertext files it recorded with them); then this
marks every installed version of the overlay as erased in `store/state.json` and removes what is
left of their objects (manifest, signatures, the ciphertext when `erase all` had no key table to
read). The item itself stays, with its `max_version`: an erased overlay cannot be replayed by
importing one of its old bundles again, and `ask --overlay on` or a rollback to it says "erased"
(exit 6) rather than "not found". The vault stays the authority: killed between the two steps, the
store still lists versions whose keys are gone, and loading them fails with exit 6 all the same;
the same erase again finishes this step (each function returns what it forgot, so the erase can
tell "finished now" from "already erased").
"""

from dataclasses import replace
from typing import Optional

from ..fsutil import discard
from ..vault import Vault
from .at_rest import data_key_id
from .layout import Store, StoreDamaged


def forget_items(vault: Vault, kind: str, name: Optional[str]) -> list[str]:
    """Mark item NAME of `kind` (None: every item of it) erased in state.json, then remove its store objects;
    the embedded default becomes the active base if an erased base was.

    Returns the data key ids of the versions it marked (those whose manifest could still be read)."""
    store = Store.unlocked(vault)
    state = store.read_state()
    items = dict(state.items)
    gone: list[str] = []
    key_ids: list[str] = []
    for n, item in state.items.items():
        if item.kind != kind or not item.installed or (name is not None and n != name):
            continue
        versions = set(item.erased)
        for sha in item.installed:
            try:
                version = store.read_manifest(sha).version
            except StoreDamaged:
                continue  # its key is gone all the same; the number only serves the messages
            versions.add(version)
            key_ids.append(data_key_id(kind, n, version))
        items[n] = replace(item, active=None, installed=(), erased=tuple(sorted(versions)))
        gone += item.installed
    if not gone:
        return []
    base = None if state.base is not None and items[state.base].active is None else state.base
    store.write_state(replace(state, items=items, base=base))
    discard(vault.home, store.forget_objects(gone))
    return sorted(key_ids)
