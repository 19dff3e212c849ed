"""The table, as one process sees it: one view of vault.json and heads.json, kept, under one lock.

`VaultView` holds the KEK and what it last read or wrote; `JournalHeads` (`journal_heads`), then
`SessionKeys` (`session_keys`), then `Vault` (`vault`) build on it, each owning its own rules.

Rules:
- Every table change is read-modify-write under the exclusive vault lock (`disk.vault_lock`), so
  two appliance processes never lose each other's keys or heads (`_table`).
- The table is opened once and kept (`_view`) while vault.json is the file it was read from, or
  the one this process wrote last (`vault_file.unchanged`): a command that reads many sessions
  decrypts the table once, and still sees at its next call a vault another process wrote.
  Inside `pinned` (a command that only reads) the view taken at its start is used without looking
  at the files again, so every session is read against the same vault; a write ends it.
- Every write of vault.json first takes the heads moved since (heads.json, `heads_file` rule 4) into
  its table, then removes heads.json (`_merged`, `_write`).
- Every write raises the generation by one (of heads.json too). A process remembers the highest it has
  seen and refuses a lower one (`VaultRolledBack`, exit 3): an older copy of the vault put back while
  the appliance runs is caught at its next read. A copy put back between two runs is caught only by
  comparing the generation with one noted outside the machine (`generation`, docs/procedures.md).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from ..utc import now_text
from . import heads_file, upgrades
from .aead import zeroize
from .disk import vault_lock
from .errors import VaultRolledBack
from .heads_file import MovedHeads
from .key_files import JOURNAL_KEY_ID
from .slots import SlotTable
from .vault_file import Opened, load, store, unchanged, unwrap_master


class VaultView:
    """The KEK (zeroed by `zeroize`, or on leaving a `with` block) and the table it last opened."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        """`with Vault.unlock(...) as vault:` zeroes the KEK however the body ends."""
        self.zeroize()

    def knows(self, key_id: str) -> bool:
        """Whether `key_id` has a data key here (in the table, or a session recorded by its head), in O(1)."""
        _, table, moved = self._state()
        return key_id != JOURNAL_KEY_ID and (key_id in table.slots or is_recorded(table, moved, key_id))

    def key_ids(self, prefix: str = "") -> list[str]:
        _, table, moved = self._state()
        ids = set(table.slots) | set(table.heads) | set(moved.heads if moved else ())
        return sorted(i for i in ids if i.startswith(prefix) and i != JOURNAL_KEY_ID)

    # -- the table on disk ---------------------------------------------------------------

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


def is_recorded(table: SlotTable, moved: MovedHeads | None, key_id: str) -> bool:
    """Whether `key_id` is a session recorded by its head (its key in a file of its own, `key_files`), not erased."""
    return key_id not in table.erased and (key_id in table.heads or (moved is not None and key_id in moved.heads))
