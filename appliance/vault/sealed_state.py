"""State files that only the passphrase can change: their SHA-256 kept in the vault's sealed table.

The trust policy, the keyring of pinned signers, the store's state and each version's accepted
record are plain files (readable, diffable), but the vault's key-slot table, which is AES-GCM
sealed under the master key, records the digest of each one's last written bytes. So whoever can
write the state directory but lacks the passphrase can neither change them nor put back an older
copy of one of them, nor of the vault alone: the next read refuses (exit 3, naming the file).

What this cannot catch is an older copy of the whole state directory (vault and files from the
same moment): it is consistent in itself, so it brings back the trust policy, keyring and floors
of its day, and the journal as it was (sessions written since are gone without a trace here);
erased items only if their ciphertext was copied too, never a data key erased before the copy.
The vault's generation, compared with the one the operator noted, is what shows it
(`Vault.generation`, docs/procedures.md section 1).

Rules:
1. a file is keyed by its path relative to the state directory;
2. read: absent and never sealed (or sealed as `ABSENT`) -> None; absent but sealed -> forged
   (deleted); present but never sealed -> forged (planted); present with a digest the table does
   not hold -> forged (modified, or an older copy put back);
3. write: the new digest joins the current ones in the table (`ABSENT` for a file never written:
   "no file yet" is an old state too), the file is replaced atomically, then the table keeps only
   the new digest. A crash in between leaves the old state or the new file, and both are accepted
   until the next write of that file settles it. A write that fails puts the old digests back,
   unless the new bytes landed (the rename done, its directory's fsync failed): then both stay;
4. `forget` drops the digests of files the appliance deleted itself.
"""

import hashlib
from pathlib import Path
from typing import Optional

from ..errors import EnvironmentRefused
from ..fsutil import atomic_write
from ..state_files import MAX_STATE_FILE, StateForged
from .vault import Vault

MAX_SEALED_FILE = max(MAX_STATE_FILE, 16 << 20)  # the signers' keyring can outgrow a JSON state file
ABSENT = "absent"  # in a file's digests: "no file" is an accepted state (never a SHA-256, which is hex)


class SealedState:
    """`state_files.StateSeal` for one unlocked vault."""

    def __init__(self, vault: Vault):
        self.vault = vault
        self.home = vault.home

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.home).as_posix()

    def read(self, path: Path) -> Optional[bytes]:
        sealed = self.vault.file_digests(self._rel(path))
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SEALED_FILE + 1)
        except FileNotFoundError:
            if sealed and ABSENT not in sealed:
                raise StateForged(path, "deleted") from None
            return None
        if not sealed:
            raise StateForged(path, "not written by this appliance")
        if hashlib.sha256(data).hexdigest() not in sealed:
            raise StateForged(path, "modified, or an older copy put back")
        return data

    def write(self, path: Path, data: bytes) -> None:
        rel, digest = self._rel(path), hashlib.sha256(data).hexdigest()
        old = self.vault.file_digests(rel)
        self.vault.set_file_digests(rel, (old or (ABSENT,)) + (digest,))
        created = []  # folders made for this file: removed again if it cannot be written
        try:
            for folder in reversed(path.parents[: len(path.relative_to(self.home).parents) - 1]):
                if not folder.is_dir():
                    folder.mkdir(mode=0o700)
                    created.append(folder)
            atomic_write(path, data)
        except OSError as e:
            if _digest_of(path) != digest:
                self.vault.set_file_digests(rel, old)
            for folder in reversed(created):
                folder.rmdir()
            raise EnvironmentRefused(f"cannot write {path} ({e.strerror}): it is unchanged") from None
        self.vault.set_file_digests(rel, (digest,))

    def forget(self, paths: list[Path]) -> None:
        self.vault.forget_file_digests([self._rel(p) for p in paths])


def _digest_of(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(MAX_SEALED_FILE + 1)).hexdigest()
    except OSError:
        return None
