"""What the vault refuses with: each failure a type, so a caller can act on it (exit 3 refused, 4 locked, 6 erased)."""

from pathlib import Path

from ..errors import Erased, Locked, Refused


class NoVault(Locked):
    def __init__(self, home: Path):
        super().__init__(f"no vault in {home}: run `appliance init` to set a passphrase")


class WrongPassphrase(Locked):
    def __init__(self):
        super().__init__("wrong passphrase (or a damaged vault file): the vault stays locked, nothing was changed")


class VaultCorrupt(Locked):
    """The vault file is malformed: nothing can be unlocked from it."""


class KeySlotsCorrupt(VaultCorrupt):
    """The sealed key-slot table is malformed or failed authentication under its master key."""


class VaultRekeyed(Locked):
    """The vault file needs another key-encryption key than the one this process unlocked it with."""

    def __init__(self, path: Path):
        super().__init__(f"{path} was rekeyed since this appliance unlocked it (a passphrase change): unlock it again")


class VaultRolledBack(Refused):
    """The vault's generation is lower than one already seen: an older copy of the vault was put back."""

    def __init__(self, generation: int, seen: int, by: str):
        super().__init__(
            f"the vault is at generation {generation}, but {by} generation {seen}: an older copy of the state directory "
            "was put back (docs/procedures.md, section 1)"
        )
        self.generation, self.seen = generation, seen


class VaultErased(Erased):
    def __init__(self, when: str):
        super().__init__(f"the vault was crypto-erased at {when}: no passphrase opens it; `appliance init` starts afresh")
