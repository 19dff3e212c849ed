"""What a kill does, for every front end (`ask` under its guard, the chat UI).

In this order, because the first steps must not wait on the disk: the kill-switch callbacks
switch the overlay and the control vector off and zero their decrypted weights; the wipe policy can
turn any kill into a wipe; the journal (if a session was opened) gets its final `kill` record naming
what is erased; then a wipe crypto-erases every overlay, every control vector and every imported base;
last, the kill-switch is told it is handled (`KillSwitch.confirm`), which `appliance kill` reads.

When the appliance cannot do its own wipe (none runs, or it did not confirm and was SIGKILLed),
`kill --wipe` does it; a command with no journal session open (an import) records its kill the same
way: a `kill` record in a journal session of its own (`handle_kill_in_new_session`).
"""

from typing import Optional

from .erase import erase_installed
from .journal import Journal
from .trust.kinds import ENCRYPTED
from .vault import Vault
from .vault.killswitch import WIPE_POLICY, Killed, KillSwitch


def handle_kill(killed: Killed, ks: KillSwitch, vault: Vault, journal: Optional[Journal]) -> list[str]:
    """Returns the vault key ids a wipe erased (none for a plain kill)."""
    ks.run_callbacks()
    killed.wipe = killed.wipe or bool(vault.setting(WIPE_POLICY, False))
    wiping = {kind.kill_field: vault.key_ids(kind.keys) if killed.wipe else [] for kind in ENCRYPTED}
    if journal is not None:
        journal.append("kill", wipe=killed.wipe, **wiping)
    if killed.wipe:
        erase_installed(vault)
    ks.confirm(killed.wipe)
    return [key_id for key_ids in wiping.values() for key_id in key_ids]


def handle_kill_in_new_session(killed: Killed, ks: KillSwitch, vault: Vault) -> list[str]:
    """`handle_kill` with its `kill` record in a journal session of its own."""
    journal = Journal.create(vault)
    try:
        return handle_kill(killed, ks, vault, journal)
    finally:
        journal.close()
