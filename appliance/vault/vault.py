"""The vault, whole: one file (`vault_file`), under one lock.

    passphrase --KDF (`kdf`)--> KEK
    KEK        --AES-256-GCM--> master key (fresh at every write)     vault.json "master"
    master     --AES-256-GCM--> key-slot table (`SlotTable`)          vault.json "table"
    KEK        --AES-256-GCM--> one data key per key id, kept wrapped in the table
    table      --> journal heads, sealed settings, sealed file digests, the generation
    master     --HKDF--> heads key --AES-256-GCM--> the heads moved since      heads.json (`heads_file`)
    KEK        --AES-256-GCM--> the journal key, a data key in the table
    journal key --AES-256-GCM--> one journal session's data key           keys/<key id>.key (`key_files`)

Rules:
- Every table change is read-modify-write under the exclusive vault lock (`disk.vault_lock`), so
  two appliance processes never lose each other's keys or heads.
- The table is opened once and kept (`_view`) while vault.json is the file it was read from, or
  the one this `Vault` wrote last (`vault_file.unchanged`): a command that reads many sessions
  decrypts the table once, and still sees at its next call a vault another process wrote.
  Inside `pinned` (a command that only reads) the view taken at its start is used without looking
  at the files again, so every session is read against the same vault; a write ends it.
- A journal append moves its session's head in heads.json (`heads_file`), whose size is that of the
  sessions appended to since vault.json was written, not of the journal: every other change
  rewrites vault.json, which first takes those heads into its table.
- A journal session's data key is a file of its own (`key_files`), sealed under the journal key; the
  session is recorded by a head of seq 0 moved like any other, so a new session writes two small
  files, not vault.json. Its head in the table, once taken in, is all it adds to vault.json.
- Every write raises the generation by one (of heads.json too). A `Vault` remembers the highest it has seen and
  refuses a lower one (`VaultRolledBack`, exit 3): an older copy of the vault put back while the
  appliance runs is caught at its next read. A copy put back between two runs is caught only by
  comparing the generation with one noted outside the machine (`generation`, docs/procedures.md).
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import NotFound, Refused
from ..fsutil import discard, fsync_dir
from ..utc import now_text
from . import heads_file, key_files, upgrades
from .aead import KEY_BYTES, derive_key, random_key, zeroize
from .disk import vault_dir, vault_lock
from .errors import NoVault, VaultCorrupt, VaultErased, VaultRolledBack
from .heads_file import MovedHeads
from .key_files import FILED, JOURNAL_KEY_ID
from .slots import KEY_ID, Head, Slot, SlotTable
from .vault_file import (
    Opened,
    load,
    new_kek,
    open_kek,
    store,
    unchanged,
    unwrap_data_key,
    unwrap_master,
    wrap_data_key,
    write_tombstone,
)

MAX_MOVED = 256  # heads kept in heads.json before a write takes them into vault.json: bounds both files' cost


class Vault:
    """An unlocked vault: holds the KEK (zeroed by `zeroize`, or on leaving a `with` block) and the table it last opened."""

    def __init__(self, home: Path, kek: bytearray, salt: object):
        self.home = home
        self._kek = kek
        self._salt = salt  # the KDF salt of the file this KEK opens
        self._seen = 0  # the highest generation read or written by this process
        self._view: Opened | None = None  # vault.json as last read or written here; never changed in place
        # heads.json as last read or written beside that view: (the view, its bytes, its heads; None where none count)
        self._moved: tuple[Opened, bytes | None, MovedHeads | None] | None = None
        self._pinned = False  # inside `pinned`: the view above is used as it is
        self._journal_key: bytearray | None = None  # unwrapped once inside `pinned` (every session reads it), zeroed after

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

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """One view of the vault for reading many sessions: taken under the lock, then kept until the block ends or a write."""
        with vault_lock(self.home):
            self._state()
        self._pinned = True
        try:
            yield
        finally:
            self._unpin()

    def _unpin(self) -> None:
        self._pinned = False
        if self._journal_key is not None:
            zeroize(self._journal_key)
            self._journal_key = None

    def generation(self) -> tuple[int, str]:
        """How many times the vault files were written, and when last: what the operator notes offline."""
        _, table, moved = self._state()
        return (moved.generation, moved.written) if moved else (table.generation, table.written)

    def zeroize(self) -> None:
        self._unpin()
        zeroize(self._kek)
        self._view = self._moved = None

    def __enter__(self) -> "Vault":
        return self

    def __exit__(self, *exc) -> None:
        """`with Vault.unlock(...) as vault:` zeroes the KEK however the body ends."""
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
        if key_id in table.slots or not _recorded(table, moved, key_id):
            return unwrap_data_key(self._kek, key_id, table.entry(key_id).key)
        opened = self._filed(table, key_id)
        if opened is None:
            raise NotFound(f"{key_id}: its key file is missing (deleted, or this vault is a copy from before it)")
        return opened[0]

    def knows(self, key_id: str) -> bool:
        """Whether `key_id` has a data key here (in the table, or a session recorded by its head), in O(1)."""
        _, table, moved = self._state()
        return key_id != JOURNAL_KEY_ID and (key_id in table.slots or _recorded(table, moved, key_id))

    def key_ids(self, prefix: str = "") -> list[str]:
        _, table, moved = self._state()
        ids = set(table.slots) | set(table.heads) | set(moved.heads if moved else ())
        return sorted(i for i in ids if i.startswith(prefix) and i != JOURNAL_KEY_ID)

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
                if key_id in table.slots or not _recorded(table, None, key_id):
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

    def journal_subkey(self, info: bytes) -> bytearray | None:
        """A key for the journal's own sealed files (its index), HKDF-SHA256 of the journal key under `info`: it goes
        with the journal key at `erase logs`. None while there is no journal key (no session made since it was erased)."""
        slot = self._read_table().slots.get(JOURNAL_KEY_ID)
        if slot is None:
            return None
        journal_key = unwrap_data_key(self._kek, JOURNAL_KEY_ID, slot.key)
        try:
            return derive_key(journal_key, info)
        finally:
            zeroize(journal_key)

    def erase_journal(self) -> list[str]:
        """`erase logs` in a time flat in the number of sessions (`key_files` rule 4): one write of vault.json drops the
        journal key, under which every session's key file is sealed, and the sessions' heads (a session whose key an
        older vault keeps in its table is erased by its id, as `erase` does); then the key files go. Returns the key
        ids whose erase proves it: the journal key's and the table's; none where there was no session."""
        if not self.key_ids(FILED):
            return []
        with self._table() as table:
            when = now_text()
            proof = [i for i in table.slots if i.startswith(FILED)]
            for key_id in proof:
                del table.slots[key_id]
                table.erased[key_id] = when
            for key_id in [i for i in table.heads if i.startswith(FILED)]:
                del table.heads[key_id]
            if table.slots.pop(JOURNAL_KEY_ID, None) is not None:
                table.erased[JOURNAL_KEY_ID] = when
                proof.insert(0, JOURNAL_KEY_ID)
        if key_files.keys_dir(self.home).exists():  # keyless since the write above: a crash leaves them unread
            discard(self.home, [key_files.keys_dir(self.home)])
        return proof

    # -- sealed heads (the journal's last record per session) ---------------------------

    def head(self, key_id: str) -> tuple[int, str] | None:
        """The sealed head of `key_id`; None where nothing was sealed (a session only recorded has seq 0)."""
        _, table, moved = self._state()
        head = (moved.heads.get(key_id) if moved else None) or table.heads.get(key_id)
        return None if head is None or head.seq == 0 else (head.seq, head.hash)

    def seal_head(self, key_id: str, seq: int, digest: str) -> None:
        """Move the head of `key_id` in heads.json: a write the size of the sessions in use (`heads_file`)."""
        with vault_lock(self.home):
            self._unpin()
            _, table, moved = self._state()
            if key_id not in table.slots and not _recorded(table, moved, key_id):
                table.entry(key_id)
            self._move_head(key_id, Head(seq, digest))

    def _move_head(self, key_id: str, head: Head) -> None:
        """heads.json with `head` moved in; vault.json taking them all in where heads.json would hold too many."""
        doc, table, moved = self._state()
        heads = {**(moved.heads if moved else {}), key_id: head}
        if len(heads) > MAX_MOVED:
            doc, merged = self._merged()
            merged.heads[key_id] = head
            self._write(doc["kdf"], str(doc.get("created")), merged)
            return
        generation = (moved.generation if moved else table.generation) + 1
        key = self._heads_key(doc)
        self._moved = None  # a write that fails leaves the file unknown: the next call reads it
        try:
            written = heads_file.write(self.home, key, table.generation, generation, now_text(), heads)
        finally:
            zeroize(key)
        self._moved, self._seen = (self._load()[2], written.raw, written), generation

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

    # -- the table on disk ---------------------------------------------------------------

    def _record_filed(self, key_id: str, key: bytearray, files: tuple[str, ...]) -> None:
        """A journal session's key in its own file, then the session recorded by a head of seq 0 (`key_files` rule 1)."""
        with vault_lock(self.home):
            self._unpin()
            doc, table, moved = self._state()
            if key_id in table.slots or _recorded(table, moved, key_id) or key_id in table.erased:
                raise Refused(f"{key_id} already has a data key, or had one")
            if JOURNAL_KEY_ID not in table.slots:  # the first session (again after `erase logs`): one write of vault.json
                if key_files.keys_dir(self.home).exists():  # what a crash in `erase_journal` left: no key opens it
                    discard(self.home, [key_files.keys_dir(self.home)])
                doc, merged = self._merged()
                journal_key = random_key()
                try:
                    merged.slots[JOURNAL_KEY_ID] = Slot(wrap_data_key(self._kek, JOURNAL_KEY_ID, journal_key), (), now_text())
                finally:
                    zeroize(journal_key)
                self._write(doc["kdf"], str(doc.get("created")), merged)
                table = self._state()[1]
            journal_key = unwrap_data_key(self._kek, JOURNAL_KEY_ID, table.slots[JOURNAL_KEY_ID].key)
            try:
                key_files.write(self.home, journal_key, key_id, key, files, now_text())
            finally:
                zeroize(journal_key)
            self._move_head(key_id, Head(0, ""))

    def _filed(self, table: SlotTable, key_id: str) -> tuple[bytearray, tuple[str, ...]] | None:
        """A recorded session's key and files from its key file; None where the file or the journal key is gone."""
        slot = table.slots.get(JOURNAL_KEY_ID)
        if slot is None:
            return None
        if self._pinned:
            if self._journal_key is None:
                self._journal_key = unwrap_data_key(self._kek, JOURNAL_KEY_ID, slot.key)
            return key_files.read(self.home, self._journal_key, key_id)
        journal_key = unwrap_data_key(self._kek, JOURNAL_KEY_ID, slot.key)
        try:
            return key_files.read(self.home, journal_key, key_id)
        finally:
            zeroize(journal_key)

    def _inside_home(self, rel: str) -> Path:
        if not isinstance(rel, str) or os.path.isabs(rel):
            raise Refused(f"ciphertext path is not relative to the state dir: {rel!r}")
        path = (self.home / rel).resolve()
        if self.home.resolve() not in path.parents:
            raise Refused(f"ciphertext path outside the state dir: {rel!r}")
        return path

    def _read_table(self) -> SlotTable:
        return self._state()[1]

    def _state(self) -> tuple[dict, SlotTable, MovedHeads | None]:
        """vault.json's file and table, and the heads moved since (`heads_file`); refused below a generation seen."""
        if self._pinned and self._view is not None and self._moved is not None:
            return self._view.doc, self._view.table, self._moved[2]
        while True:  # heads.json read while vault.json stayed the same: a writer of both in between reads again
            doc, table, view = self._load()
            raw = heads_file.read_raw(self.home)
            if view.mark is None or unchanged(self.home, view.mark):
                break
        if self._moved is None or self._moved[0] is not view or self._moved[1] != raw:
            self._moved = None
            moved = None
            if raw is not None:
                key = self._heads_key(doc)
                try:
                    moved = heads_file.opened(self.home, raw, key, table.generation)
                finally:
                    zeroize(key)
            self._moved = (view, raw, moved)
        moved = self._moved[2]
        generation = moved.generation if moved else table.generation
        if generation < self._seen:
            raise VaultRolledBack(generation, self._seen, "this appliance has already seen")
        self._seen = generation
        return doc, table, moved

    def _load(self) -> tuple[dict, SlotTable, Opened]:
        """vault.json: the view kept while the file is unchanged, else read and opened again."""
        if self._view is None or not unchanged(self.home, self._view.mark):
            self._view = self._moved = None
            self._view = load(self.home, self._kek, self._salt)
        return self._view.doc, self._view.table, self._view

    def _heads_key(self, doc: dict) -> bytearray:
        master = unwrap_master(self._kek, doc)
        try:
            return heads_file.heads_key(master)
        finally:
            zeroize(master)

    def _merged(self) -> tuple[dict, SlotTable]:
        """The file, and a copy of its table to change with the heads moved since taken in (`heads_file` rule 4)."""
        doc, read, moved = self._state()
        table = read.copy()
        if moved:
            table.heads.update(moved.heads)
            table.generation, table.written = moved.generation, moved.written
        return doc, table

    def _write(self, kdf: dict, created: str, table: SlotTable) -> None:
        """Seal `table` as the next generation (the caller holds the lock)."""
        table.generation, table.written = table.generation + 1, now_text()
        self._view = self._moved = None  # a write that fails leaves the file unknown: the next call reads it
        self._view = store(self.home, self._kek, kdf, created, table)
        self._salt, self._seen = kdf["salt"], table.generation
        heads_file.remove(self.home)  # its heads are in the table now

    @contextmanager
    def _table(self) -> Iterator[SlotTable]:
        """Read-modify-write of the table under the lock; written back only if the body succeeds."""
        with vault_lock(self.home):
            self._unpin()
            upgrades.remove_leftovers(self.home)
            doc, table = self._merged()
            yield table
            self._write(doc["kdf"], str(doc.get("created")), table)


def _recorded(table: SlotTable, moved: MovedHeads | None, key_id: str) -> bool:
    """Whether `key_id` is a session recorded by its head (its key in a file of its own, `key_files`), not erased."""
    return key_id not in table.erased and (key_id in table.heads or (moved is not None and key_id in moved.heads))
