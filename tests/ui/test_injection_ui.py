"""The chat UI shows outside text escaped and literal: Textual passes ESC and C1 controls to the terminal
as they are, and a DataTable reads a string cell as markup (a link, a style, or a parse error that
stops the app)."""

import re
from types import SimpleNamespace

from helpers import PASSPHRASE
from textual.widgets import DataTable, Label, Markdown
from ui_support import open_sessions, send, unlock, wait_for

from appliance.errors import Refused
from appliance.journal import Journal
from appliance.ui.core import Outcome
from appliance.ui.widgets import ChatMessage, StatusBar
from appliance.vault import Vault

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
EVIL = "hi \x1b]0;pwned\x07\x1b]52;c;cm0=\x07\x1b[2J\x9b2J [/oops] [link=https://e.example]x[/link]"
SHOWN = "hi \\x1b]0;pwned\\x07\\x1b]52;c;cm0=\\x07\\x1b[2J\\x9b2J [/oops] [link=https://e.example]x[/link]"


def _screen_text(app) -> str:
    """Everything the terminal would be sent for the current screen, as text."""
    return app.export_screenshot()


async def test_sessions_screen_shows_a_journaled_prompt_escaped_and_literal(vault_home, make_app):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    journal = Journal.create(vault)
    journal.append("message", role="user", text=EVIL)
    journal.close()
    vault.zeroize()
    app = make_app(overlay=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = await open_sessions(pilot)
        await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 2, what="the sessions")  # and the chat's own
        table = screen.query_one(DataTable)
        previews = [table.get_row_at(n)[2] for n in range(table.row_count)]  # "first message"
        (row,) = [n for n, p in enumerate(previews) if p.plain]  # the chat's own session has no message yet
        preview = previews[row]
        assert preview.plain == SHOWN[: len(preview.plain)] and "[/oops]" in preview.plain  # literal, not markup
        assert not any(span.style and "link" in str(span.style) for span in preview.spans)
        table.move_cursor(row=row)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.query_one("#transcript", Markdown).source, what="the transcript")
        transcript = screen.query_one("#transcript", Markdown).source
        assert SHOWN in transcript and not RAW.search(transcript)
        assert not RAW.search(_screen_text(app))


class _EvilReply:
    """`ChatCore.reply` for a model whose words carry terminal controls and markup, streamed in pieces."""

    pieces = ["Sure ", "\x1b]0;", "pwned\x07", " \x1b[2J\x9b", "[/oops] done"]

    def __call__(self, text, on_text, stop) -> Outcome:
        for piece in self.pieces:
            on_text(piece)
        reply = SimpleNamespace(on=frozenset(), tokens=self.pieces, tokens_per_second=1.0, finish="stop", dropped_turns=0)
        return Outcome(reply, None)


async def test_a_reply_with_controls_and_an_error_quoting_them_are_shown_escaped(vault_home, make_app):
    app = make_app(overlay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        app.core.reply = _EvilReply()
        await send(pilot, "anything")
        body = app.screen.query(ChatMessage)[-1].body.source
        assert body == "Sure \\x1b]0;pwned\\x07 \\x1b[2J\\x9b[/oops] done"

        def refuse(text, on_text, stop):
            raise Refused(f"journal write refused: {EVIL}")

        app.core.reply = refuse
        await send(pilot, "again")
        header = str(app.screen.query(ChatMessage)[-1].query_one(".header", Label).render())
        assert header == f"assistant  error: journal write refused: {SHOWN}"
        await pilot.pause()
        assert not RAW.search(_screen_text(app))  # the reply, the header and the notification
        app.screen.query_one(StatusBar).overlay = EVIL  # signers shown here come from the store
        await pilot.pause()
        assert SHOWN[:20] in str(app.screen.query_one(StatusBar).render()) and not RAW.search(_screen_text(app))
