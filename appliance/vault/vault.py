"""The vault, whole: one file (`vault_file`), under one lock.

    passphrase --KDF (`kdf`)--> KEK
    KEK        --AES-256-GCM--> master key (fresh at every write)     vault.json "master"
    master     --AES-256-GCM--> key-slot table (`SlotTable`)          vault.json "table"
    KEK        --AES-256-GCM--> one data key per key id, kept wrapped in the table
    table      --> journal heads, sealed settings, sealed file digests, the generation
    master     --HKDF--> heads key --AES-256-GCM--> the heads moved since      heads.json (`heads_file`)
    KEK        --AES-256-GCM--> the journal key, a data key in the table
    journal key --AES-256-GCM--> one journal session's data key           keys/<key id>.key (`key_files`)

`Vault` is built in layers, each a module owning its rules: the table as one process sees it, under
the lock (`table_view`); the journal heads (`journal_heads`); the sessions' key files
(`session_keys`); and here, the vault's life (create, unlock, passphrase, erase all), data keys by key
id, settings and file digests.

Rules:
- Crypto-erase removes data keys in one atomic rewrite (under a fresh master key, as every write)
  and remembers the ids as erased, a session's key file removed first and the journal key with the last; only then is the ciphertext recorded with them discarded
  (`fsutil.discard`).
- `erase_all` needs no passphrase: the vault file becomes a tombstone; `create` may then start afresh.
- Unlock fails (exit 4) without changing a byte on disk: missing vault, wrong passphrase,
  malformed or tampered file. The one write an unlock makes is the upgrade of a vault in an
  older format (`upgrades`), once.
"""

import copy
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import NotFound, Refused
from ..fsutil import discard, fsync_dir
from ..utc import now_text
from . import heads_file, key_files, upgrades
from .aead import KEY_BYTES, random_key, zeroize
from .disk import vault_dir, vault_lock
from .errors import NoVault, VaultCorrupt, VaultErased
from .key_files import FILED, JOURNAL_KEY_ID
from .session_keys import SessionKeys
from .slots import KEY_ID, Slot, SlotTable
from .table_view import is_recorded
from .vault_file import new_kek, open_kek, unwrap_data_key, wrap_data_key, write_tombstone


class Vault(SessionKeys):
    """An unlocked vault: holds the KEK (zeroed by `zeroize`, or on leaving a `with` block) and the table it last opened."""

    # -- whole-vault operations ----------------------------------------------------

    @staticmethod
    def state(home: Path) -> str:
        """'none', 'erased' or 'present' (present says nothing about the passphrase, nor whether it opens)."""
        try:
            upgrades.current(home)
        except NoVault:
            return "none"
        except VaultErased:
            return "erased"
        except VaultCorrupt:
            return "present"
        return "present"

    @staticmethod
    def require(home: Path) -> None:
        """Raise NoVault / VaultErased / VaultCorrupt unless a vault is there to unlock (no key work)."""
        upgrades.current(home)

    @classmethod
    def create(cls, home: Path, passphrase: bytes | bytearray, *, cost: dict | None = None) -> "Vault":
        """A new vault with an empty table. Refused where a live vault exists (an erased one is replaced).

        `cost` (a KDF's name and parameters) is for tests, which make cheap vaults; the appliance never passes it.
        """
        if not passphrase:
            raise Refused("the passphrase must not be empty")
        if cls.state(home) == "present":
            raise Refused(f"a vault already exists in {home}: use `appliance passphrase` to change its passphrase")
        vault_dir(home).mkdir(mode=0o700, parents=True, exist_ok=True)
        kek, kdf = new_kek(passphrase, cost)
        vault = cls(home, kek, kdf["salt"])
        try:
            with vault_lock(home):
                heads_file.remove(home)  # an erased vault's: its base may name the generation the new one starts at
                vault._write(kdf, now_text(), SlotTable())
                upgrades.remove_leftovers(home)  # an erased format-1 vault's tombstone
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def unlock(cls, home: Path, passphrase: bytes | bytearray) -> "Vault":
        """Derive the KEK, check it opens the master key and the table; read-only on disk but for an upgrade."""
        upgraded = upgrades.upgrade(home, passphrase)
        if upgraded is not None:
            kek, salt = upgraded[0], upgraded[1]["salt"]
        else:
            kek, doc = open_kek(home, passphrase)
            salt = doc["kdf"]["salt"]
        vault = cls(home, kek, salt)
        try:
            vault._state()
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def change_passphrase(cls, home: Path, old: bytes | bytearray, new: bytes | bytearray, *, cost: dict | None = None) -> None:
        """A KEK from `new` (fresh salt, `cost` as for `create`); every data key rewrapped under it, in one atomic write.

        A copy of the vault file from before the change needs the old passphrase; a process that
        holds the old KEK (a running appliance) is locked out at its next read (`VaultRekeyed`).
        """
        if not new:
            raise Refused("the new passphrase must not be empty")
        vault = cls.unlock(home, old)
        kek, kdf = new_kek(new, cost)
        try:
            with vault_lock(home):
                upgrades.remove_leftovers(home)
                doc, table = vault._merged()
                for key_id, slot in table.slots.items():
                    key = unwrap_data_key(vault._kek, key_id, slot.key)
                    try:
                        table.slots[key_id] = Slot(wrap_data_key(kek, key_id, key), slot.files, slot.created)
                    finally:
                        zeroize(key)
                vault._kek, kek = kek, vault._kek
                vault._write(kdf, str(doc.get("created")), table)
        finally:
            zeroize(kek)
            vault.zeroize()

    @staticmethod
    def erase_all(home: Path) -> str:
        """Replace the vault file by a tombstone (needs no passphrase). Returns the time."""
        if Vault.state(home) == "none":
            raise NotFound(f"no vault in {home}")
        with vault_lock(home):  # waits out a write in flight, and clears the copies interrupted ones left
            when = write_tombstone(home)
            heads_file.remove(home)
            shutil.rmtree(key_files.keys_dir(home), ignore_errors=True)  # sealed under a key the tombstone took away
            upgrades.remove_leftovers(home)
            fsync_dir(vault_dir(home))
        return when

    # -- data keys, by key id ------------------------------------------------------------

    def new_data_key(self, key_id: str, files: Sequence[str] = ()) -> bytearray:
        """A fresh random data key for `key_id`, recorded in the table before it is returned."""
        key = random_key()
        try:
            self.record_data_key(key_id, key, files)
        except BaseException:
            zeroize(key)
            raise
        return key

    def record_data_key(self, key_id: str, key: bytearray, files: Sequence[str] = (), *, replace: bool = False) -> None:
        """Record `key` (from `random_key`) as the data key of `key_id`, in one atomic table rewrite.

        For callers that must encrypt before they may write to the vault (an import that can still
        be refused keeps its key in memory until it commits). `files` are the key's ciphertext
        paths relative to the state dir: crypto-erase deletes them after the key is gone.
        Re-creating an erased id is allowed (a fresh key). An existing key is refused unless
        `replace`, which only a caller that knows that key to be an orphan may ask for.
        """
        if not KEY_ID.fullmatch(key_id):
            raise Refused(f"not a valid key id: {key_id!r}")
        if len(key) != KEY_BYTES:
            raise Refused(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        for f in files:
            self._inside_home(f)
        if key_id.startswith(FILED) and not replace:
            self._record_filed(key_id, key, tuple(files))
            return
        with self._table() as table:
            if key_id in table.slots and not replace:
                raise Refused(f"{key_id} already has a data key")
            table.erased.pop(key_id, None)
            table.slots[key_id] = Slot(wrap_data_key(self._kek, key_id, key), tuple(files), now_text())

    def data_key(self, key_id: str) -> bytearray:
        """The data key of `key_id`, in a buffer the caller zeroes; Erased (exit 6) or NotFound (exit 5)."""
        _, table, moved = self._state()
        if key_id in table.slots or not is_recorded(table, moved, key_id):
            return unwrap_data_key(self._kek, key_id, table.entry(key_id).key)
        opened = self._filed(table, key_id)
        if opened is None:
            raise NotFound(f"{key_id}: its key file is missing (deleted, or this vault is a copy from before it)")
        return opened[0]

    def erased_key_ids(self, prefix: str = "") -> dict[str, str]:
        """Tombstones: erased key id -> UTC time of the erase."""
        return {i: t for i, t in sorted(self._read_table().erased.items()) if i.startswith(prefix)}

    def erase(self, key_ids: list[str]) -> list[str]:
        """Crypto-erase data keys in one atomic table rewrite, then delete their ciphertext files.

        Unknown ids raise NotFound, already erased ones Erased; in both cases nothing changes.
        Returns the ciphertext paths deleted (relative to the state dir).
        """
        with self._table() as table:
            files: dict[str, tuple[str, ...]] = {}
            filed = []
            for key_id in key_ids:
                if key_id in table.slots or not is_recorded(table, None, key_id):
                    files[key_id] = table.entry(key_id).files
                    continue
                filed.append(key_id)
                opened = self._filed(table, key_id)  # None: an interrupted erase removed it already
                if opened is not None:
                    zeroize(opened[0])
                    files[key_id] = opened[1]
            key_files.remove(self.home, filed)  # before the table records it: a crash leaves no key behind
            when = now_text()
            for key_id in key_ids:
                table.slots.pop(key_id, None)
                table.heads.pop(key_id, None)
                table.erased[key_id] = when
            if not any(i.startswith(FILED) and i not in table.slots for i in table.heads):
                table.slots.pop(JOURNAL_KEY_ID, None)  # its last session gone: no copy of a key file opens again
        # The keys are gone (durably) before any ciphertext is touched: a crash in between
        # leaves undecryptable files, never readable data that was meant to be erased.
        paths = {self._inside_home(rel): rel for rels in files.values() for rel in rels}
        return [paths[path] for path in discard(self.home, list(paths))]

    # -- settings sealed with the keys (so changing them needs the passphrase) -----------

    def setting(self, name: str, default=None):
        return copy.deepcopy(self._read_table().settings.get(name, default))

    def set_setting(self, name: str, value) -> None:
        with self._table() as table:
            table.settings[name] = value

    # -- digests of sealed state files (`sealed_state`): what only the passphrase can change --

    def file_digests(self, rel: str) -> tuple[str, ...]:
        return self._read_table().files.get(rel, ())

    def set_file_digests(self, rel: str, digests: tuple[str, ...]) -> None:
        with self._table() as table:
            table.files[rel] = tuple(sorted(set(digests)))

    def forget_file_digests(self, rels: list[str]) -> None:
        """Drop the digests of these files, and of every file under them (a folder the appliance deleted)."""
        with self._table() as table:
            for known in list(table.files):
                if any(known == rel or known.startswith(rel.rstrip("/") + "/") for rel in rels):
                    del table.files[known]

    def _inside_home(self, rel: str) -> Path:
        if not isinstance(rel, str) or os.path.isabs(rel):
            raise Refused(f"ciphertext path is not relative to the state dir: {rel!r}")
        path = (self.home / rel).resolve()
        if self.home.resolve() not in path.parents:
            raise Refused(f"ciphertext path outside the state dir: {rel!r}")
        return path
