"""F4 opens on the newest page of sessions (from the journal's index) and pages with n and p."""

from helpers import PASSPHRASE
from textual.widgets import DataTable
from ui_support import open_sessions, unlock

from appliance.journal import Journal, sessions
from appliance.ui import sessions as sessions_screen
from appliance.vault import Vault

PAGE = 3  # small, so that a few sessions make pages


def _rows(screen) -> list[str]:
    table = screen.query_one(DataTable)
    return [str(table.get_row_at(n)[0]) for n in range(table.row_count)]


async def test_f4_opens_on_the_newest_page_and_pages(vault_home, make_app, monkeypatch):
    monkeypatch.setattr(sessions_screen, "PAGE", PAGE)
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as vault:
        for i in range(PAGE + 2):
            j = Journal.create(vault)
            j.append("message", role="user", text=f"past question {i}")
            j.close()
    app = make_app(overlay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        newest = sessions(app.core.vault)[::-1]  # with the chat's own, if it has made one
        screen = await open_sessions(pilot)
        assert _rows(screen) == newest[:PAGE]
        assert f"page 1 of {-(-len(newest) // PAGE)}" in str(screen.query_one("#result").render())
        await pilot.press("n")
        assert _rows(screen) == newest[PAGE : 2 * PAGE]
        await pilot.press("p")
        assert _rows(screen) == newest[:PAGE]
        await pilot.press("p")  # no newer page: says so and stays
        assert _rows(screen) == newest[:PAGE] and "no previous page" in str(screen.query_one("#result").render())
