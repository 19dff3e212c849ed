"""Pilot steps shared by the UI tests."""

import time

from textual.widgets import Input

from appliance.ui.chat import ChatScreen
from appliance.ui.widgets import ChatMessage, PromptInput


async def wait_for(pilot, condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def unlock(pilot, passphrase: str) -> None:
    pilot.app.screen.query_one("#passphrase", Input).value = passphrase
    await pilot.press("enter")
    await pilot.pause()


async def send(pilot, text: str) -> None:
    """Type a prompt and wait until its reply has finished."""
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    before = len(screen.query(ChatMessage))
    screen.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(screen.query(ChatMessage)) == before + 2 and screen.worker is None, what="the reply")
