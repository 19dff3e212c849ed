"""What the vault refuses with: each failure a type, so a caller can act on it (exit 4 locked, 6 erased)."""

from pathlib import Path

from ..errors import Erased, Locked


class NoVault(Locked):
    def __init__(self, home: Path):
        super().__init__(f"no vault in {home}: run `appliance init` to set a passphrase")


class WrongPassphrase(Locked):
    def __init__(self):
        super().__init__("wrong passphrase (or a damaged vault file): the vault stays locked, nothing was changed")


class VaultCorrupt(Locked):
    """master.json is malformed: nothing can be unlocked from it."""


class KeySlotsCorrupt(VaultCorrupt):
    """slots.json is malformed or failed authentication under the master key."""


class VaultErased(Erased):
    def __init__(self, when: str):
        super().__init__(f"the vault was crypto-erased at {when}: no passphrase opens it; `appliance init` starts afresh")
