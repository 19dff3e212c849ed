"""Kill (key and signal), erase modals, the sessions screen, help and the command palette."""

import os
import signal
from datetime import datetime, timezone

import pytest
from helpers import PASSPHRASE
from textual.widgets import DataTable, Label, Markdown
from ui_support import open_sessions, send, unlock, wait_for

from appliance.errors import Erased
from appliance.journal import read_session, sessions, verify_session
from appliance.journal.session_files import relative_path
from appliance.overlay.files import Overlay
from appliance.ui.chat import ChatScreen
from appliance.ui.help import HelpScreen
from appliance.ui.keys import SECTIONS
from appliance.ui.modals import EraseScreen
from appliance.ui.sessions import SessionsScreen
from appliance.ui.unlock import UnlockScreen
from appliance.ui.widgets import ChatMessage, StatusBar
from appliance.utc import MICROSECONDS_FORMAT
from appliance.vault import Vault
from appliance.vault.killswitch import pid_path


def _vault(home) -> Vault:
    return Vault.unlock(home, PASSPHRASE.encode())


@pytest.mark.parametrize("how", ["key", "signal"])
async def test_kill_mid_reply_locks_and_journals(vault_home, make_app, how):
    app = make_app(max_tokens=2000)
    async with app.run_test() as pilot:
        previous = signal.getsignal(signal.SIGTERM)
        await unlock(pilot, PASSPHRASE)
        assert pid_path(vault_home).exists()  # `appliance kill` from another terminal finds the UI
        screen, params = app.screen, app.core.app.items[Overlay.KIND].weights.params
        screen.query_one("#prompt").text = "Write a very long story about a lighthouse keeper."
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.query(ChatMessage)) == 2 and screen.query(ChatMessage)[1].body.source)
        sid = app.core.status().session_id
        pressed = datetime.now(timezone.utc)
        if how == "key":
            await pilot.press("f9")
        else:  # what `appliance kill` sends
            os.kill(os.getpid(), signal.SIGTERM)
        # The unlock screen is the active one before it has composed its widgets: wait for its message.
        await wait_for(pilot, lambda: isinstance(app.screen, UnlockScreen) and app.screen.query("#message"), timeout=5)
        assert "Killed" in str(app.screen.query_one("#message", Label).render())
        # Disarmed: the signal handlers are back, the pid file and its lock are gone.
        assert not app.core.unlocked and signal.getsignal(signal.SIGTERM) is previous
        assert not pid_path(vault_home).exists()
        assert not params.B.any() and not params.A.any()  # the decrypted weights are zeroed
        await unlock(pilot, PASSPHRASE)  # the passphrase brings it back, in a new session
        assert isinstance(app.screen, ChatScreen) and app.core.status().session_id != sid
    _user, reply, kill = read_session(_vault(vault_home), sid)
    assert reply["finish"] == "cancelled" and reply["tokens"] < 300
    assert kill["kind"] == "kill" and kill["wipe"] is False
    # The cut-off reply is journalled once generation has stopped: that moment bounds the stop latency
    # (printed for the record; a shared machine makes it a measurement, not an assertion).
    stopped = datetime.strptime(reply["time"], MICROSECONDS_FORMAT).replace(tzinfo=timezone.utc) - pressed
    print(f"\nkill ({how}) -> generation stopped and journalled in {stopped.total_seconds() * 1000:.0f} ms")


def _fake_overlay_key_id(home):
    """The vault key an installed overlay `care` v1 has (the store's own import is tested in tests/trust)."""
    vault = _vault(home)
    vault.new_data_key("overlay/care/1")
    vault.zeroize()


async def test_erase_overlay_needs_its_name(vault_home, make_app):
    _fake_overlay_key_id(vault_home)
    app = make_app()
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f7")
        assert isinstance(app.screen, EraseScreen)
        await pilot.press(*"cares", "enter")
        assert isinstance(app.screen, EraseScreen)
        assert "did not match" in str(app.screen.query_one("#message", Label).render())
        assert _vault(vault_home).data_key("overlay/care/1")
        await pilot.press(*"care", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
        status = app.screen.query_one(StatusBar)
        assert status.overlay_on is None and status.overlay == "none installed"
    with pytest.raises(Erased):
        _vault(vault_home).data_key("overlay/care/1")


async def test_erase_journal_then_a_fresh_session(vault_home, make_app):
    app = make_app(overlay=False)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, "Hello.")
        old = app.core.status().session_id
        await pilot.press("f8", *"erase log", "enter")
        assert isinstance(app.screen, EraseScreen) and verify_session(_vault(vault_home), old).ok
        await pilot.press(*"erase logs", "enter")
        await pilot.pause()
        new = app.core.status().session_id
        assert new != old and app.screen.query_one(StatusBar).session == new
    with pytest.raises(Erased):
        verify_session(_vault(vault_home), old)


async def test_sessions_open_verify_export(vault_home, make_app, tmp_path):
    app = make_app(overlay=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, "Say hello.")
        first = app.core.status().session_id
        await pilot.press("f5")
        await send(pilot, "Say goodbye.")
        second = app.core.status().session_id
        path = vault_home / relative_path(second)
        data = bytearray(path.read_bytes())
        data[-5] ^= 1  # tamper with the last record of the second session
        path.write_bytes(bytes(data))

        screen = await open_sessions(pilot)
        assert screen.query_one(DataTable).row_count == 2
        await pilot.press("v")
        await app.workers.wait_for_complete()
        verdict = str(screen.query_one("#result", Label).render())
        assert f"{second} BROKEN at record 2: modified" in verdict and first not in verdict
        await pilot.press("down", "enter")  # the newest first: the second row is the first session
        await pilot.pause()
        transcript = screen.query_one("#transcript", Markdown).source
        assert "Say hello." in transcript and app.core.model.sha256[:12] in transcript
        await pilot.press("e")
        assert (tmp_path / f"{first}.md").read_text() == transcript
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)
    assert sessions(_vault(vault_home)) == [first, second]


async def test_help_and_palette_list_every_key(vault_home, make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.query_one(Markdown).source
        for _, keys in SECTIONS:
            for k in keys:
                assert f"`{k.key}`" in text and k.help in text
        assert "costs" in text
        # What help lists is what runs: each key it names for a screen has that screen's action.
        for (_, keys), owner in zip(SECTIONS, (type(app), ChatScreen, SessionsScreen)):
            for k in keys:
                assert k.builtin or callable(getattr(owner, f"action_{k.action}", None)), f"{k.key}: no action_{k.action}"
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Kill [f9]", "Overlay [f2]", "Sessions [f4]", "Audit [f3]", "Help [f1]"} <= set(titles)
        await pilot.press("ctrl+p")
        await pilot.press(*"overlay")
        await pilot.pause(0.3)
        await pilot.press("enter")  # runs "Overlay [f2]" from the palette
        await wait_for(pilot, lambda: not app.core.session.is_on(Overlay.KIND), timeout=5)
