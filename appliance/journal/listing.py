"""The sessions as a listing shows them, a page at a time: summaries from the index (`index`), record
counts from the vault's sealed heads, and every session the index is behind on read from the journal and
added to it (`index` rule 2). Nothing here verifies a session the index knows: `logs verify` does.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import Erased, NotFound
from ..vault import Vault, zeroize
from .index import Index, Summary, add, index_key, rewrite, summarise
from .session_files import session_key_id, verify_session

PAGE = 50  # sessions a page: a screenful, and the newest show at once whatever the history's length


@dataclass(frozen=True)
class Listed:
    """One session as a listing shows it: its summary and sealed record count, or why it could not be read."""

    session_id: str
    records: int
    summary: Summary | None  # None: unreadable (its key erased or missing)
    trouble: str  # "" | "BROKEN at ..." | "unreadable: ..."


class Listing:
    """The summaries of one command (taken under `Vault.pinned`), and the ones it read from the journal."""

    def __init__(self, vault: Vault):
        self.vault = vault
        self._key = index_key(vault)
        self._index = Index(vault.home, self._key) if self._key is not None else None
        self.rebuilt = 0  # sessions read from the journal (rule 2)

    @property
    def unopened(self) -> int:
        """Lines of the index that did not open (`index` rule 3)."""
        return self._index.unopened if self._index is not None else 0

    def __enter__(self) -> "Listing":
        return self

    def __exit__(self, *exc) -> None:
        if self._key is not None:
            zeroize(self._key)

    def rows(self, session_ids: list[str]) -> Iterator[Listed]:
        """The sessions in the order given; those the index is behind on are read and added (rule 2)."""
        fresh: list[Summary] = []
        if self._index is not None:
            self._index.open_for(session_ids)
        try:
            for sid in session_ids:
                listed, summary = self._listed(sid)
                if summary is not None:
                    fresh.append(summary)
                yield listed
        finally:
            if self._key is not None and self._index is not None and self._index.unopened:  # `index` rule 3
                self._index.open_all()
                rewrite(self.vault.home, self._key, self._index.known())
            elif self._key is not None and fresh:
                add(self.vault.home, self._key, fresh)

    def _listed(self, sid: str) -> tuple[Listed, Summary | None]:
        key_id = session_key_id(sid)
        recorded = self.vault.knows(key_id)  # a stray file is not: it is read, and found an orphan
        head = self.vault.head(key_id) if recorded else None
        sealed = head[0] if head else 0
        known = self._index.get(sid) if self._index is not None else None
        if recorded and known is not None and (known.final or known.seen == sealed):
            return Listed(sid, sealed, known, ""), None
        self.rebuilt += 1
        try:
            report = verify_session(self.vault, sid)
        except (Erased, NotFound) as e:
            return Listed(sid, 0, None, f"unreadable: {e}"), None
        summary = summarise(sid, report.records)
        if report.broken_at is not None:
            return Listed(sid, len(report.records), summary, f"BROKEN at {report.broken_at}"), None
        if self._index is not None:
            self._index.note(summary)
        return Listed(sid, len(report.records), summary, ""), summary
