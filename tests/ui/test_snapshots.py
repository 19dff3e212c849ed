"""Snapshots of the screens at 80x24 (and the first four at 120x40); update with `pytest tests/ui --snapshot-update`.

Deterministic by construction: journal session ids are fixed, the past sessions are written
directly through the journal API, and the chat's messages and numbers are set, not generated.
"""

import itertools

import pytest
from helpers import PASSPHRASE
from ui_support import unlock, wait_for

from appliance import presets
from appliance.journal import Journal
from appliance.journal import session_files as journal_files
from appliance.ui.divergence import Divergence
from appliance.ui.widgets import ChatMessage, StatusBar
from appliance.vault import Vault

SIZES = [(80, 24), (120, 40)]
REPLY = """Three colours of the sea at dawn:

1. **slate grey** before the sun,
2. *rose* where the light first touches,
3. `#1e90ff` by mid-morning."""


@pytest.fixture
def fixed_ids(monkeypatch):
    ids = (f"20260101T00000{n}Z-0000000{n}" for n in itertools.count(1))
    monkeypatch.setattr(journal_files, "new_session_id", lambda: next(ids))


API_CLIENT = {"pid": 4242, "exe": "/usr/bin/python3.11"}


@pytest.fixture
def past_sessions(vault_home, fixed_ids):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    # The second came through the API (`appliance serve`): its messages name the client that asked.
    for text, client in (("How do I change the passphrase?", {}), ("Summarise the kill procedure.", {"client": API_CLIENT})):
        journal = Journal.create(vault)
        journal.append("message", role="user", text=text, **client)
        journal.append("message", role="assistant", text="...")
        journal.close()
    vault.zeroize()


async def _chat(pilot) -> None:
    await unlock(pilot, PASSPHRASE)
    screen = pilot.app.screen
    await screen.add_message("user", "What colours is the sea at dawn?")
    await screen.add_message("assistant", REPLY, header="assistant  overlay ON  38 tok  97.5 tok/s  KL rmse 0.412 max 1.730")
    status = screen.query_one(StatusBar)
    status.tokens_per_second, status.audit, status.context_used = 97.5, True, 412
    status.divergence = Divergence(38, 0.412, 1.73)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_unlock(snap_compare, vault_home, make_app, size):
    assert snap_compare(make_app(), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat(snap_compare, vault_home, fixed_ids, make_app, size):
    assert snap_compare(make_app(), terminal_size=size, run_before=_chat)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sessions(snap_compare, past_sessions, make_app, size):
    async def run_before(pilot):
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f4", "v")

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, vault_home, fixed_ids, make_app, size):
    async def run_before(pilot):
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f1")

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


@pytest.fixture
def two_presets(vault_home):
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as vault:
        presets.add(vault, "field-medic", "You are a careful field medic.\nAnswer in three short steps.")
        presets.add(vault, "terse", "Answer in one word.")


def test_preset_picker(snap_compare, two_presets, fixed_ids, make_app):
    async def run_before(pilot):
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f6")

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def test_resumed_chat(snap_compare, past_sessions, make_app):
    app = make_app()
    app.core.resume_at_unlock = "20260101T000001Z-00000001"  # `appliance chat --resume ID`

    async def run_before(pilot):
        await unlock(pilot, PASSPHRASE)
        await wait_for(pilot, lambda: len(pilot.app.screen.query(ChatMessage)) == 2, what="the resumed history")

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
