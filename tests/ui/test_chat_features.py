"""Search (F4), the context meter, regenerate, edit and resend, copy."""

from textual.widgets import DataTable, Input, Label, Markdown
from ui_support import PASSPHRASE, send, unlock, wait_for

from appliance.journal import Journal
from appliance.ui.sessions import SessionsScreen
from appliance.ui.widgets import StatusBar
from appliance.vault import Vault


def _write_sessions(home, *conversations: tuple[str, ...]) -> list[str]:
    vault = Vault.unlock(home, PASSPHRASE.encode())
    ids = []
    for texts in conversations:
        journal = Journal.create(vault)
        for i, text in enumerate(texts):
            journal.append("message", role="user" if i % 2 == 0 else "assistant", text=text)
        journal.close()
        ids.append(journal.session_id)
    vault.zeroize()
    return ids


def _rows(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(n)] for n in range(table.row_count)]


async def test_sessions_search_filters_to_matching_records(vault_home, make_app):
    first, second, third = _write_sessions(
        vault_home,
        ("Where is the lighthouse?", "On the northern cape."),
        ("Tell me about tides.", "The LIGHTHOUSE keeper logs them \x1b]0;pwned\x07 daily.", "And storms?", "Lighthouse lamps stay lit."),
        ("Nothing here.", "Indeed."),
    )
    app = make_app(overlay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f4")
        screen = app.screen
        assert isinstance(screen, SessionsScreen)
        table = screen.query_one(DataTable)
        assert table.row_count == 4  # the chat's own new session and the three above
        await pilot.press("slash")
        assert screen.query_one("#search", Input).has_focus
        await pilot.press(*"lighthouse", "enter")
        result = screen.query_one("#result", Label)
        await wait_for(pilot, lambda: "matches" in str(result.render()), what="the search")
        assert "3 matches for 'lighthouse' in 2 of 4 sessions" in str(result.render())
        rows = _rows(table)  # sessions made in the same second sort by their random part: order not asserted
        assert sorted((r[0], r[1], r[3]) for r in rows) == sorted([(first, "1", "user"), (second, "2", "assistant"), (second, "4", "assistant")])
        escaped = next(r[4] for r in rows if r[:2] == [second, "2"])
        assert "\\x1b]0;pwned\\x07" in escaped and "\x1b" not in escaped  # shown escaped
        assert third not in {r[0] for r in rows}
        assert table.has_focus
        table.move_cursor(row=next(n for n, r in enumerate(rows) if r[0] == second))
        await pilot.press("enter")  # opens the session of that match
        await pilot.pause()
        assert "Tell me about tides." in screen.query_one("#transcript", Markdown).source
        screen.query_one("#search", Input).value = ""  # an empty search lists every session again
        await pilot.press("slash", "enter")
        await pilot.pause()
        assert table.row_count == 4


async def test_context_meter_counts_the_window_and_says_when_the_oldest_are_dropped(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=8)
    long_prompt = "Repeat after me: " + " ".join(["seven"] * 1100)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        status = app.screen.query_one(StatusBar)
        assert status.window == 2048 and "ctx -/2048" in _text(status)
        await send(pilot, long_prompt)
        first = status.context_used
        assert first is not None and 1100 < first < 2048
        assert f"ctx {first}/2048" in _text(status) and "dropped" not in _text(status) and status.dropped == 0
        await send(pilot, long_prompt)  # two of these do not fit: the first exchange is left out
        assert status.dropped == 1 and "1 oldest dropped" in _text(status)
        assert 1100 < status.context_used < 2048  # what the model saw: the second prompt alone, not both
        assert any("oldest exchanges left out" in n.message for n in app._notifications)
        await pilot.press("f5")  # a new session starts an empty window
        await pilot.pause()
        assert status.context_used is None and status.dropped == 0 and "ctx -/2048" in _text(status)


def _text(widget) -> str:
    return widget.render().plain
