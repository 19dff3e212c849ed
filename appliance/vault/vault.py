"""The vault, whole: master.json and the key-slot table, under one lock.

    passphrase --KDF (`kdf`)--> KEK
    KEK    --AES-256-GCM--> master key (32 random bytes)          master.json     (`master`)
    master --AES-256-GCM--> key-slot table (`SlotTable`)          slots.json      (`slots`)
    table  --> one data key per key id, journal heads, sealed settings, sealed file digests

Rules:
- Every table change is read-modify-write under the exclusive vault lock (`disk.vault_lock`), so
  two appliance processes never lose each other's keys or heads; the table is read again per call.
- Crypto-erase removes data keys in one atomic table rewrite and remembers the ids as erased;
  only then is the ciphertext recorded with them discarded (`fsutil.discard`).
- `erase_all` needs no passphrase: master.json becomes a tombstone; `create` may then start afresh.
- Unlock fails (exit 4) without changing a byte on disk: missing vault, wrong passphrase,
  malformed or tampered file.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import NotFound, Refused
from ..fsutil import discard, fsync_dir
from ..utc import now_text
from .aead import KEY_BYTES, b64, random_key, secret, unb64, zeroize
from .disk import vault_dir, vault_lock
from .errors import KeySlotsCorrupt
from .master import read_master, rewrap_master, unwrap_master, vault_state, write_master, write_tombstone
from .slots import KEY_ID, Head, Slot, SlotTable, read_table, slots_path, write_table


class Vault:
    """An unlocked vault: holds the master key (zeroed by `zeroize`, or on leaving a `with` block) and reads the table per call."""

    def __init__(self, home: Path, master: bytearray):
        self.home = home
        self._master = master

    # -- whole-vault operations ----------------------------------------------------

    @staticmethod
    def state(home: Path) -> str:
        """'none', 'erased' or 'present' (present says nothing about the passphrase)."""
        return vault_state(home)

    @staticmethod
    def require(home: Path) -> None:
        """Raise NoVault / VaultErased / VaultCorrupt unless a vault is there to unlock (no key work)."""
        read_master(home)

    @classmethod
    def create(cls, home: Path, passphrase: bytes | bytearray) -> "Vault":
        """A new vault with an empty table. Refused where a live vault exists (an erased one is replaced)."""
        if not passphrase:
            raise Refused("the passphrase must not be empty")
        if vault_state(home) == "present":
            raise Refused(f"a vault already exists in {home}: use `appliance passphrase` to change its passphrase")
        vault_dir(home).mkdir(mode=0o700, parents=True, exist_ok=True)
        vault = cls(home, random_key())
        try:
            with vault_lock(home):
                # The table first: a crash before master.json lands leaves "no vault" (or the old
                # tombstone), and the next create overwrites this orphan table.
                write_table(home, vault._master, SlotTable())
                write_master(home, passphrase, vault._master)
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def unlock(cls, home: Path, passphrase: bytes | bytearray) -> "Vault":
        """Derive the KEK, unwrap the master key and check the table opens; read-only on disk."""
        vault = cls(home, unwrap_master(home, passphrase))
        try:
            vault._read_table()
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def change_passphrase(cls, home: Path, old: bytes | bytearray, new: bytes | bytearray) -> None:
        """Rewrap the master key under a KEK from `new` (fresh salt); data keys and data are untouched."""
        if not new:
            raise Refused("the new passphrase must not be empty")
        vault = cls.unlock(home, old)
        try:
            with vault_lock(home):
                rewrap_master(home, vault._master, new)
        finally:
            vault.zeroize()

    @staticmethod
    def erase_all(home: Path) -> str:
        """Destroy the master key slot (needs no passphrase), then the sealed table. Returns the time."""
        if vault_state(home) == "none":
            raise NotFound(f"no vault in {home}")
        with vault_lock(home):  # waits out a write in flight, and clears the copies interrupted ones left
            when = write_tombstone(home)
            slots_path(home).unlink(missing_ok=True)
            fsync_dir(vault_dir(home))
        return when

    def zeroize(self) -> None:
        zeroize(self._master)

    def __enter__(self) -> "Vault":
        return self

    def __exit__(self, *exc) -> None:
        """`with Vault.unlock(...) as vault:` zeroes the master key however the body ends."""
        self.zeroize()

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
        with self._table() as table:
            if key_id in table.slots and not replace:
                raise Refused(f"{key_id} already has a data key")
            table.erased.pop(key_id, None)
            table.slots[key_id] = Slot(b64(key), tuple(files), now_text())

    def data_key(self, key_id: str) -> bytearray:
        """The data key of `key_id`, in a buffer the caller zeroes; Erased (exit 6) or NotFound (exit 5)."""
        key = secret(unb64(self._read_table().entry(key_id).key, KeySlotsCorrupt, f"slots.json: key of {key_id}"))
        if len(key) != KEY_BYTES:
            raise KeySlotsCorrupt(f"slots.json: key of {key_id} has the wrong length")
        return key

    def key_ids(self, prefix: str = "") -> list[str]:
        return sorted(i for i in self._read_table().slots if i.startswith(prefix))

    def erased_key_ids(self, prefix: str = "") -> dict[str, str]:
        """Tombstones: erased key id -> UTC time of the erase."""
        return {i: t for i, t in sorted(self._read_table().erased.items()) if i.startswith(prefix)}

    def erase(self, key_ids: list[str]) -> list[str]:
        """Crypto-erase data keys in one atomic table rewrite, then delete their ciphertext files.

        Unknown ids raise NotFound, already erased ones Erased; in both cases nothing changes.
        Returns the ciphertext paths deleted (relative to the state dir).
        """
        with self._table() as table:
            slots = {key_id: table.entry(key_id) for key_id in key_ids}
            when = now_text()
            for key_id in slots:
                del table.slots[key_id]
                table.heads.pop(key_id, None)
                table.erased[key_id] = when
        # The keys are gone (durably) before any ciphertext is touched: a crash in between
        # leaves undecryptable files, never readable data that was meant to be erased.
        paths = {self._inside_home(rel): rel for slot in slots.values() for rel in slot.files}
        return [paths[path] for path in discard(self.home, list(paths))]

    # -- sealed heads (the journal's last record per session) ---------------------------

    def head(self, key_id: str) -> tuple[int, str] | None:
        head = self._read_table().heads.get(key_id)
        return None if head is None else (head.seq, head.hash)

    def seal_head(self, key_id: str, seq: int, digest: str) -> None:
        with self._table() as table:
            table.entry(key_id)
            table.heads[key_id] = Head(seq, digest)

    # -- settings sealed with the keys (so changing them needs the passphrase) -----------

    def setting(self, name: str, default=None):
        return self._read_table().settings.get(name, default)

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

    # -- the table on disk ---------------------------------------------------------------

    def _inside_home(self, rel: str) -> Path:
        if not isinstance(rel, str) or os.path.isabs(rel):
            raise Refused(f"ciphertext path is not relative to the state dir: {rel!r}")
        path = (self.home / rel).resolve()
        if self.home.resolve() not in path.parents:
            raise Refused(f"ciphertext path outside the state dir: {rel!r}")
        return path

    def _read_table(self) -> SlotTable:
        return read_table(self.home, self._master)

    @contextmanager
    def _table(self) -> Iterator[SlotTable]:
        """Read-modify-write of the table under the lock; written back only if the body succeeds."""
        with vault_lock(self.home):
            table = self._read_table()
            yield table
            write_table(self.home, self._master, table)
