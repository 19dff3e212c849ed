"""Past journal sessions: list, open one decrypted with its provenance, verify all, export Markdown."""

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Markdown

from ..errors import ApplianceError
from ..journal import Report
from ..journal.transcript import markdown_transcript
from ..printable import printable
from .core import ChatCore
from .keys import SESSIONS_KEYS, bindings
from .widgets import PlainLabel


def _cells(*values: str) -> tuple[Text, ...]:
    """A row of the table: a DataTable reads a plain string as markup, so every cell is escaped Text."""
    return tuple(Text(printable(v)) for v in values)


def _state(report: Report) -> str:
    if report.ok:
        return "ok" + (f" ({report.unsealed} unsealed)" if report.unsealed else "")
    return f"BROKEN at {report.brk}"


class SessionsScreen(Screen):
    KEYS = SESSIONS_KEYS
    BINDINGS = bindings(SESSIONS_KEYS)

    def __init__(self, core: ChatCore, export_dir: Path):
        super().__init__()
        self.core, self.export_dir = core, export_dir

    def compose(self) -> ComposeResult:
        yield Label("Journal sessions: enter opens, v verifies all, e exports, escape returns", id="title")
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield PlainLabel("", id="result")
        with VerticalScroll(id="viewer"):
            yield Markdown("", id="transcript", open_links=False)  # escaped by markdown_transcript
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("session", "records", "state", "first message")
        self._fill()
        table.focus()

    def _fill(self) -> list[Report]:
        """(Re)read every session; returns the reports of the readable ones."""
        table = self.query_one(DataTable)
        table.clear()
        reports = []
        try:
            ids = self.core.sessions()
        except ApplianceError as e:  # the key-slot table itself is unreadable
            self._say(str(e))
            return reports
        for sid in ids:
            try:
                report = self.core.check(sid)
            except ApplianceError as e:  # erased or missing key: listed, not opened
                table.add_row(*_cells(sid, "-", f"unreadable: {e}", ""), key=sid)
                continue
            reports.append(report)
            table.add_row(*_cells(sid, str(len(report.records)), _state(report), report.preview(40)), key=sid)
        return reports

    def _selected(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        sid = event.row_key.value
        try:
            text = markdown_transcript(sid, self.core.read(sid))
        except ApplianceError as e:
            self._say(str(e))
            return
        await self.query_one("#transcript", Markdown).update(text)
        self._say(f"opened {sid}")

    def action_verify(self) -> None:
        reports = self._fill()
        broken = [r for r in reports if not r.ok]
        verdict = f"verified {len(reports)} sessions: " + ("all intact" if not broken else
                                                         "; ".join(f"{r.session_id} BROKEN at {r.brk}" for r in broken))
        self._say(verdict)

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
