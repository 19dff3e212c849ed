"""The heads: each journal session's last sealed record, moved by its appends.

Rules:
- A journal append moves its session's head in heads.json (`heads_file`), whose size is that of the
  sessions appended to since vault.json was written, not of the journal: every other change
  rewrites vault.json, which first takes those heads into its table (`table_view`).
- Where heads.json would hold more than `MAX_MOVED` heads, the append writes vault.json instead,
  taking them all in: both files' cost stays bounded.
- A head is moved only for a key id the vault has: one in the table, or a session recorded by its head.
"""

from ..utc import now_text
from . import heads_file
from .aead import zeroize
from .disk import vault_lock
from .slots import Head
from .table_view import VaultView, is_recorded

MAX_MOVED = 256  # heads kept in heads.json before a write takes them into vault.json: bounds both files' cost


class JournalHeads(VaultView):
    """The sealed heads (the journal's last record per session), read and moved."""

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
            if key_id not in table.slots and not is_recorded(table, moved, key_id):
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
