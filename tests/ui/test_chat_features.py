"""Search (F4), the context meter, regenerate, edit and resend, copy: on the real model where the reply matters."""

import base64

from helpers import PASSPHRASE
from textual.widgets import DataTable, Input, Label, Markdown
from ui_support import open_sessions, send, unlock, wait_for

from appliance.journal import Journal, read_session
from appliance.printable import printable
from appliance.runtime.sampler import GREEDY, SamplingSettings
from appliance.runtime.session import Session
from appliance.ui.help import help_markdown
from appliance.ui.widgets import ChatMessage, PromptInput, StatusBar
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
        (
            "Tell me about tides.",
            "The LIGHTHOUSE keeper logs them \x1b]0;pwned\x07 daily.",
            "And storms?",
            "Lighthouse lamps stay lit.",
        ),
        ("Nothing here.", "Indeed."),
    )
    app = make_app(overlay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = await open_sessions(pilot)
        table = screen.query_one(DataTable)
        assert table.row_count == 4  # the chat's own new session and the three above
        await pilot.press("slash")
        assert screen.query_one("#search", Input).has_focus
        await pilot.press(*"lighthouse", "enter")
        result = screen.query_one("#result", Label)
        await wait_for(pilot, lambda: "matches" in str(result.render()), what="the search")
        assert "3 matches for 'lighthouse' in 2 of 4 sessions" in str(result.render())
        rows = _rows(table)  # sessions made in the same second sort by their random part: order not asserted
        assert sorted((r[0], r[1], r[3]) for r in rows) == sorted(
            [(first, "1", "user"), (second, "2", "assistant"), (second, "4", "assistant")]
        )
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


def _records(home, session_id):
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        return read_session(vault, session_id)
    finally:
        vault.zeroize()


async def _wait_reply(pilot, screen, replaced=None):
    await wait_for(pilot, lambda: not screen.replies.busy and screen.last_exchange is not None and screen.last_exchange.reply is not replaced,
                   what="the reply")  # fmt: skip


async def test_regenerate_replaces_the_last_reply_with_a_new_seed(vault_home, make_app, reference_runtime):
    app = make_app(overlay=False, max_tokens=16)
    app.core.settings = SamplingSettings(seed=7)  # sampled, so the seed matters
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = app.screen
        await pilot.press("ctrl+r")
        assert any("no reply to regenerate" in n.message for n in app._notifications)
        await send(pilot, "Name a colour.")
        old = app.core.session.history[-1]["content"]
        old_view = screen.last_exchange.reply
        await pilot.press("ctrl+r")
        await _wait_reply(pilot, screen, replaced=old_view)
        new = app.core.session.history[-1]["content"]
        assert [m.role for m in screen.query(ChatMessage)] == ["user", "assistant"]  # the old reply's view is gone
        assert screen.query(ChatMessage)[1].body.source == new
        assert app.core.session.history == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": new}]
        sid = app.core.status().session_id
    records = _records(vault_home, sid)
    assert [r["kind"] for r in records] == ["message", "message", "regenerate", "message", "message"]
    assert records[2]["replaced"] == old and records[2]["prompt"] == "Name a colour."
    assert records[1]["settings"]["seed"] == 7 and records[4]["text"] == new
    seed = records[4]["settings"]["seed"]
    assert seed != 7 and records[3]["settings"]["seed"] == seed
    # The new reply is what a fresh session with that seed says: the model saw the prompt alone, not the old reply.
    reference_runtime.decoder.reset()
    fresh = Session(reference_runtime, settings=SamplingSettings(seed=seed)).generate("Name a colour.", max_tokens=16)
    assert fresh.text == new


async def test_edit_and_resend_replaces_the_last_exchange(vault_home, make_app, reference_runtime):
    app = make_app(overlay=False, max_tokens=16)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = app.screen
        await send(pilot, "Name a fruit.")
        old_reply = app.core.session.history[-1]["content"]
        prompt = screen.query_one(PromptInput)
        await pilot.press("ctrl+l")
        assert screen.editing and prompt.text == "Name a fruit."
        await pilot.press("ctrl+l")  # again: cancelled, nothing taken back
        assert not screen.editing and prompt.text == "" and len(app.core.session.history) == 2
        await pilot.press("ctrl+l")
        prompt.text = "Name a vegetable."
        old_view = screen.last_exchange.reply
        await pilot.press("enter")
        await _wait_reply(pilot, screen, replaced=old_view)
        new_reply = app.core.session.history[-1]["content"]
        views = screen.query(ChatMessage)
        assert [(v.role, v.body.source if v.role == "assistant" else v._text) for v in views] == [
            ("user", "Name a vegetable."), ("assistant", new_reply)]  # fmt: skip
        assert app.core.session.history == [
            {"role": "user", "content": "Name a vegetable."},
            {"role": "assistant", "content": new_reply},
        ]
        sid = app.core.status().session_id
    records = _records(vault_home, sid)
    assert [r["kind"] for r in records] == ["message", "message", "edit", "message", "message"]
    assert records[0]["text"] == "Name a fruit." and records[1]["text"] == old_reply  # the old exchange stays in the journal
    assert records[2]["replaced"] == "Name a fruit." and records[2]["replaced_reply"] == old_reply
    assert records[3]["text"] == "Name a vegetable." and records[4]["text"] == new_reply
    reference_runtime.decoder.reset()
    fresh = Session(reference_runtime, settings=GREEDY).generate("Name a vegetable.", max_tokens=16)
    assert fresh.text == new_reply  # the model's history no longer holds the fruit


async def test_copy_puts_the_last_reply_on_the_clipboard_escaped(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=16)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("ctrl+o")
        assert app.clipboard == "" and any("no reply to copy" in n.message for n in app._notifications)
        await send(pilot, "Name a colour.")
        reply = app.core.session.history[-1]["content"]
        await pilot.press("ctrl+o")
        assert reply and app.clipboard == reply
        # A reply that would end a bracketed paste early, once pasted into a shell, is copied as shown: escaped.
        app.core.session.history[-1]["content"] = "ls\x1b[201~; rm -rf ~\r"
        await pilot.press("ctrl+o")
        assert app.clipboard == "ls\\x1b[201~; rm -rf ~\\x0d"
    assert "OSC 52" in help_markdown("")


async def test_copy_writes_osc_52(vault_home, make_app):
    """What reaches the terminal: Textual's OSC 52 sequence with the text in base64."""
    app = make_app(overlay=False, max_tokens=16)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, "Name a colour.")
        written = []
        app._driver.write = written.append
        await pilot.press("ctrl+o")
        reply = printable(app.core.session.history[-1]["content"])
        assert f"\x1b]52;c;{base64.b64encode(reply.encode()).decode()}\a" in written
