"""Past journal sessions: list, search, open one decrypted with its provenance, resume, verify all, export Markdown.

The list opens on its first page, the newest sessions (`journal.listing`: summaries from the journal's
sealed index, so it opens as fast at 100,000 sessions as at 10), and pages with n and p. The search
(`journal.search`) decrypts session by session in memory, the newest first; its matches replace the
list as they are found (one row per matching record) and an empty search brings the list back.
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Markdown

from ..errors import ApplianceError
from ..journal import read_session, sessions, verify_session
from ..journal.listing import PAGE, Listing
from ..journal.search import Match, search
from ..journal.transcript import markdown_transcript
from ..printable import printable
from .core import ChatCore
from .keys import SESSIONS_KEYS, bindings
from .widgets import PlainLabel


def _cells(*values: str) -> tuple[Text, ...]:
    """A row of the table: a DataTable reads a plain string as markup, so every cell is escaped Text."""
    return tuple(Text(printable(v)) for v in values)


class SessionsScreen(Screen):
    KEYS = SESSIONS_KEYS
    BINDINGS = bindings(SESSIONS_KEYS)

    def __init__(self, core: ChatCore, export_dir: Path, resume: Callable[[str], Awaitable[None]]):
        super().__init__()
        self.core, self.export_dir = core, export_dir
        self._resume = resume  # the chat's: it continues the session, or says on its screen why not
        self._row_session: dict[str, str] = {}  # row key -> session id (a search shows one row per record)
        self._page, self._pages = 0, 1  # the page shown (from 0, the newest) and how many there are

    def compose(self) -> ComposeResult:
        yield Label(
            "Sessions, the newest first: enter opens, r resumes, / searches, n p page, v verifies, e exports, esc back",
            id="title",
        )
        yield Input(id="search", placeholder="/ search every session (enter; empty lists them all)")
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield PlainLabel("", id="result")
        with VerticalScroll(id="viewer"):
            yield Markdown("", id="transcript", open_links=False)  # escaped by markdown_transcript
        yield Footer()

    def on_mount(self) -> None:
        self._fill()
        self.query_one(DataTable).focus()

    def _columns(self, *names: str) -> DataTable:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns(*names)
        self._row_session.clear()
        return table

    def _fill(self) -> None:
        """(Re)show the current page of sessions, the newest first."""
        table = self._columns("session", "records", "first message", "base + overlay", "client")
        try:
            with self.core.vault.pinned(), Listing(self.core.vault) as listing:
                ids = sessions(self.core.vault)[::-1]
                self._pages = max(1, -(-len(ids) // PAGE))
                self._page = min(self._page, self._pages - 1)
                for row in listing.rows(ids[self._page * PAGE : (self._page + 1) * PAGE]):
                    s = row.summary
                    first = "  ".join(part for part in (row.trouble, s.first if s else "") if part)
                    table.add_row(
                        *_cells(row.session_id, str(row.records), first[:60], s.model if s else "", s.client if s else ""),
                        key=row.session_id,
                    )
                    self._row_session[row.session_id] = row.session_id
        except ApplianceError as e:  # the key-slot table itself is unreadable
            self._say(str(e))
            return
        self._say(f"page {self._page + 1} of {self._pages} ({len(ids)} sessions, the newest first; n and p page)")

    def action_next_page(self) -> None:
        self._turn(1)

    def action_previous_page(self) -> None:
        self._turn(-1)

    def _turn(self, step: int) -> None:
        if 0 <= self._page + step < self._pages:
            self._page += step
            self._fill()
        else:
            self._say(f"page {self._page + 1} of {self._pages}: there is no {'next' if step > 0 else 'previous'} page")

    # -- search -------------------------------------------------------------------------

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self._fill()
        else:
            self._search(event.value)
        self.query_one(DataTable).focus()

    @work(exclusive=True, group="search")
    async def _search(self, text: str) -> None:
        """Matches are added as each session is read; the loop yields to the UI after each session, so
        keys (the kill key among them) are served during a long search. A new search cancels this one."""
        table = self._columns("session", "record", "time", "role", "match")
        found, hit_sessions, skipped = 0, set(), []
        self._say(f"searching for {text!r}...")
        try:
            ids = sessions(self.core.vault)
            for sid in reversed(ids):  # the newest first, as the list
                if not self.core.unlocked:  # killed or locked meanwhile: the vault is zeroed
                    return
                for hit in search(self.core.vault, text, [sid]):
                    if isinstance(hit, Match):
                        key = f"{hit.session_id}#{hit.record}"
                        table.add_row(*_cells(hit.session_id, str(hit.record), hit.time[:19], hit.role, hit.snippet), key=key)
                        self._row_session[key] = hit.session_id
                        found += 1
                        hit_sessions.add(hit.session_id)
                    else:
                        skipped.append(f"{hit.session_id}: {hit.reason}")
                await asyncio.sleep(0)
        except ApplianceError as e:
            self._say(f"search failed: {e}")
            return
        verdict = (
            f"{found} matches for {text!r} in {len(hit_sessions)} of {len(ids)} sessions (enter opens; empty search lists all)"
        )
        self._say(verdict + "".join(f"; skipped {s}" for s in skipped))

    def _selected(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return self._row_session.get(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or "")

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        sid = self._row_session.get(event.row_key.value or "")
        if sid is None:
            return
        try:
            text = markdown_transcript(sid, read_session(self.core.vault, sid))
        except ApplianceError as e:
            self._say(str(e))
            return
        await self.query_one("#transcript", Markdown).update(text)
        self._say(f"opened {sid}")

    @work(exclusive=True, group="verify")
    async def action_verify(self) -> None:
        """Every session, not only the page shown: its chain and sealed head, read from the journal. The loop
        yields to the UI after each session, as the search does: a long history does not freeze the screen."""
        ids = sessions(self.core.vault)
        reports = []
        for done, sid in enumerate(ids):
            if not self.core.unlocked:  # killed or locked meanwhile: the vault is zeroed
                return
            if done % 500 == 0:
                self._say(f"verifying {done} of {len(ids)} sessions...")
            try:
                with self.core.vault.pinned():
                    reports.append(verify_session(self.core.vault, sid))
            except ApplianceError:  # erased or missing key: listed as unreadable, nothing to verify
                pass
            await asyncio.sleep(0)
        broken = [r for r in reports if not r.ok]
        verdict = f"verified {len(reports)} sessions: " + (
            "all intact" if not broken else "; ".join(f"{r.session_id} BROKEN at {r.broken_at}" for r in broken)
        )
        self._say(verdict)

    async def action_resume(self) -> None:
        """Back to the chat, which continues the selected session (a failure is said there, nothing changed)."""
        sid = self._selected()
        if sid is None:
            self._say("no session to resume")
            return
        self.app.pop_screen()
        await self._resume(sid)

    def action_export(self) -> None:
        sid = self._selected()
        if sid is None:
            self._say("no session to export")
            return
        try:
            out = self.core.export(sid, self.export_dir)
        except (ApplianceError, OSError) as e:
            self._say(f"export failed: {e}")
            return
        self._say(f"exported {sid} to {out}")

    def action_back(self) -> None:
        self.app.pop_screen()

    def _say(self, text: str) -> None:
        self.query_one("#result", PlainLabel).update(text)
