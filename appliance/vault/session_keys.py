"""The session keys: each journal session's data key in a file of its own (`key_files`), under the journal key.

Rules:
- A journal session's data key is a file of its own, sealed under the journal key (a data key in
  the table, made with the first session); the session is recorded by a head of seq 0 moved like any
  other (`journal_heads`), so a new session writes two small files, not vault.json. Its head in the
  table, once taken in, is all it adds to vault.json.
- Which sessions exist is what the sealed heads say (`table_view.is_recorded`), never which key files
  are there.
- `erase logs` (`erase_journal`) drops the journal key in one write of vault.json, whatever the number
  of sessions, then the key files go (`key_files` rule 4).
- The journal's own sealed files (its index of summaries) are sealed under keys derived from the
  journal key (`journal_subkey`), so they go with it.
"""

from ..errors import Refused
from ..fsutil import discard
from ..utc import now_text
from . import key_files
from .aead import derive_key, random_key, zeroize
from .disk import vault_lock
from .journal_heads import JournalHeads
from .key_files import FILED, JOURNAL_KEY_ID
from .slots import Head, Slot, SlotTable
from .table_view import is_recorded
from .vault_file import unwrap_data_key, wrap_data_key


class SessionKeys(JournalHeads):
    """The journal sessions' data keys in their own files, and the journal key they are sealed under."""

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

    def _record_filed(self, key_id: str, key: bytearray, files: tuple[str, ...]) -> None:
        """A journal session's key in its own file, then the session recorded by a head of seq 0 (`key_files` rule 1)."""
        with vault_lock(self.home):
            self._unpin()
            doc, table, moved = self._state()
            if key_id in table.slots or is_recorded(table, moved, key_id) or key_id in table.erased:
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
