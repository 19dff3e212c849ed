"""The chat on the real embedded model: unlock, streaming, the overlay switch, escape, the journal."""

import pytest
from helpers import PASSPHRASE
from textual.widgets import Label
from ui_support import THREADS, overlay_for_tests, send, unlock, wait_for

from appliance.errors import NoOverlay, NotFound
from appliance.journal import read_session
from appliance.journal.transcript import markdown_transcript
from appliance.overlay.files import Overlay
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.ui import ChatCore
from appliance.ui.chat import ChatScreen
from appliance.ui.unlock import UnlockScreen
from appliance.ui.widgets import ChatMessage, PromptInput, StatusBar
from appliance.vault import Vault


async def test_wrong_then_right_passphrase(vault_home, make_app):
    app = make_app()
    async with app.run_test() as pilot:
        await unlock(pilot, "not the passphrase")
        assert isinstance(app.screen, UnlockScreen)
        assert "wrong passphrase" in str(app.screen.query_one("#message", Label).render())
        await unlock(pilot, PASSPHRASE)
        assert isinstance(app.screen, ChatScreen)
        status = app.screen.query_one(StatusBar)
        assert status.session == app.core.status().session_id and status.overlay_on is True
        assert status.base.startswith(app.core.model.name) and "care v1 signers A1B2C3D4 0FEDCBA9" == status.overlay


async def test_first_run_creates_the_vault(home, make_app):
    from appliance import state

    state.initialise(home)
    app = make_app()
    async with app.run_test() as pilot:
        screen = app.screen
        assert screen.creating
        await pilot.press(*"one", "enter", *"two")  # enter moves to the second field
        await pilot.press("enter")
        assert "differ" in str(screen.query_one("#message", Label).render()) and Vault.state(home) == "none"
        screen.query_one("#passphrase").value = screen.query_one("#again").value = "new passphrase"
        screen.query_one("#again").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)
    Vault.unlock(home, b"new passphrase").zeroize()


async def test_streamed_reply_is_journalled_with_provenance(vault_home, make_app):
    app = make_app(max_tokens=48)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = app.screen
        # Posted, not pressed: Pilot's press waits for the app to go idle, i.e. for the whole reply.
        screen.query_one(PromptInput).post_message(PromptInput.Submitted("Tell me about the sea."))
        await wait_for(pilot, lambda: len(screen.query(ChatMessage)) == 2)
        reply, partial_lengths = screen.query(ChatMessage)[1], set()
        while "tok/s" not in str(reply.header.render()):  # the header gets its numbers when the reply ends
            partial_lengths.add(len(reply.body.source))
            await pilot.pause(0.01)
        final = reply.body.source
        assert final.strip()
        assert any(0 < n < len(final) for n in partial_lengths), (
            f"the reply appeared only at the end: {sorted(partial_lengths)} {len(final)}"
        )
        assert "overlay ON" in str(reply.header.render()) and "tok/s" in str(reply.header.render())
        assert screen.query_one(StatusBar).tokens_per_second > 0
        sid = app.core.status().session_id
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    user, assistant = read_session(vault, sid)
    assert user["text"] == "Tell me about the sea." and assistant["text"] == final
    assert assistant["overlay"]["on"] is True and assistant["overlay"]["signers"] == sorted(
        overlay_for_tests(app.core.model).provenance.signers
    )
    assert assistant["base"]["sha256"] == app.core.model.sha256 and assistant["finish"] in ("stop", "length")


async def test_toggle_changes_the_next_reply_to_a_fresh_sessions(vault_home, make_app, reference_runtime, model):
    app = make_app()
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        status = app.screen.query_one(StatusBar)
        await send(pilot, "Name three colours.")
        first = app.screen.query(ChatMessage)[1].body.source
        await pilot.press("f2")
        assert status.overlay_on is False and "OFF" in str(status.render())
        await send(pilot, "And three animals?")
        second = app.screen.query(ChatMessage)[3].body.source
        sid = app.core.status().session_id
    history = [{"role": "user", "content": "Name three colours."}, {"role": "assistant", "content": first}]

    def fresh(on: bool) -> str:
        overlay = overlay_for_tests(model).weights
        session = Session(reference_runtime, items={Overlay.KIND: overlay}, settings=GREEDY, history=list(history))
        session.set_on(Overlay.KIND, on)
        return session.generate("And three animals?", max_tokens=24).text

    assert second == fresh(False)
    assert second != fresh(True)
    records = read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)
    assert [r["kind"] for r in records] == ["message", "message", "overlay-toggle", "message", "message"]
    assert records[2]["on"] is False and records[2]["after_messages"] == 2 and records[2]["time"]
    assert records[3]["overlay"]["on"] is False


async def test_escape_stops_a_long_reply_early(vault_home, make_app):
    app = make_app(max_tokens=2000)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        screen = app.screen
        screen.query_one("#prompt").text = "Write a very long story about a lighthouse keeper, chapter by chapter."
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.query(ChatMessage)) == 2 and len(screen.query(ChatMessage)[1].body.source) > 20)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.replies.busy, timeout=5)
        header = str(screen.query(ChatMessage)[1].header.render())
        sid = app.core.status().session_id
    assert "stopped" in header
    _, reply = read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)
    assert reply["finish"] == "cancelled" and reply["tokens"] < 300


@pytest.mark.parametrize(
    "damage, says",
    [
        ("corrupt", "not valid JSON"),
        ("erased", "crypto-erased"),
    ],
)
async def test_damaged_or_erased_vault_is_a_message(vault_home, make_app, damage, says):
    master = vault_home / "vault" / "vault.json"
    if damage == "corrupt":
        master.write_text("{not json")
    else:
        Vault.erase_all(vault_home)
    app = make_app()
    async with app.run_test() as pilot:
        if damage == "corrupt":
            await unlock(pilot, PASSPHRASE)
        text = " ".join(str(label.render()) for label in app.screen.query(Label))
        assert isinstance(app.screen, UnlockScreen) and says in text


async def test_prompt_history_and_system_prompt(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=4)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, "first")
        await send(pilot, "second\nline")
        prompt = app.screen.query_one(PromptInput)
        await pilot.press("up")
        assert prompt.text == "second\nline"
        await pilot.press("up", "up")  # the cursor stands on the last line: one up moves within the text
        assert prompt.text == "first"
        await pilot.press("down")  # a recalled prompt puts the cursor at its end, on its last line
        assert prompt.text == "second\nline"
        await pilot.press("down")
        assert prompt.text == ""
        await pilot.press("f6", "down", "enter")  # the picker: "write one for this session..."
        await pilot.press(*"Answer in French.", "ctrl+s")
        assert app.core.session.system_prompt == "Answer in French."
        await send(pilot, "Hello")
        assert app.core.session.messages()[0] == {"role": "system", "content": "Answer in French."}
        records = read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), app.core.status().session_id)
        assert records[0]["system_prompt"] is None  # the model's own default, before F6
        assert records[-2]["system_prompt"] == records[-1]["system_prompt"] == "Answer in French."  # what conditioned it
        assert 'system prompt "Answer in French."' in markdown_transcript(app.core.status().session_id, records)


@pytest.mark.parametrize(
    "error, problem",
    [
        (NoOverlay("no overlay is installed"), ""),
        (NotFound("overlay.safetensors: missing from the store"), "overlay.safetensors: missing from the store"),
    ],
    ids=["none-installed", "file-missing"],
)
def test_only_no_overlay_installed_is_quiet(vault_home, model, error, problem):
    """Nothing installed is said by the status bar; any other failure to load the overlay, a
    missing file included, is a problem the chat shows (it chats on the base alone)."""

    def loader(vault):
        raise error

    runtime = Runtime(model, n_ctx=256, n_threads=THREADS)
    core = ChatCore(vault_home, model, runtime, loaders={Overlay.KIND: loader})
    try:
        core.unlock(PASSPHRASE.encode())
        overlay = core.status().item(Overlay.KIND)
        assert overlay.loaded is None and overlay.problem == problem
    finally:
        core.close()
        runtime.close()
