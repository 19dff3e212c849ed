"""What the UI tests share besides fixtures: the passphrase, the test overlay, Pilot steps.

A plain module, not conftest: `from conftest import ...` resolves to whichever conftest pytest
loaded last when several test folders are collected together.

The overlay is a seeded random Takens-LoRA overlay handed to `ChatCore` through its
`loaders` argument (the product always decrypts the store's active overlay, re-verified):
the UI tests need an overlay whose effect is visible, not the trust chain, which tests/trust covers.
"""

import time
from datetime import datetime, timezone

from textual.widgets import Input

from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.store import ActiveItem, InstallRecord
from appliance.ui.chat import ChatScreen
from appliance.ui.sessions import SessionsScreen
from appliance.ui.widgets import ChatMessage, PromptInput

SIGNERS = ("A1B2C3D4E5F60718293A4B5C6D7E8F9012345678", "0FEDCBA9876543210FEDCBA9876543210FEDCBA9")
# One llama.cpp thread: with two threads on two cores, any other busy process makes llama.cpp's
# spinning thread barrier collapse to ~0.5 tok/s (measured); one thread keeps ~55 tok/s.
THREADS = 1
FIXED_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def overlay_for_tests(model) -> ActiveItem:
    """A fresh copy each call: a kill or an erase zeroes the weights of the one loaded."""
    params = OverlayParams.random(576, seed=1, b_scale=0.1)  # 0.2 makes the model end its first reply at once
    return ActiveItem(
        Overlay(params, model.sha256), InstallRecord("care", "overlay", 1, "ab" * 32, SIGNERS, FIXED_TIME, FIXED_TIME)
    )


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
    if isinstance(pilot.app.screen, ChatScreen):  # active before composed on a busy machine
        await wait_for(pilot, lambda: pilot.app.screen.query("#prompt"), what="the chat screen")


async def open_sessions(pilot) -> SessionsScreen:
    """F4 from the chat: the sessions screen, once it is the active one."""
    await pilot.press("f4")
    screen = pilot.app.screen
    assert isinstance(screen, SessionsScreen)
    return screen


async def send(pilot, text: str) -> None:
    """Type a prompt and wait until its reply has finished."""
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    before = len(screen.query(ChatMessage))
    screen.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(screen.query(ChatMessage)) == before + 2 and not screen.replies.busy, what="the reply")
