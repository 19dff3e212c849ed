"""The control vector in the chat, on the real model: its key (ctrl+t) switches it like F2 switches the overlay, the
status bar names both, and the divergence meter measures a reply made with only the control vector on.

The vector is handed to `ChatCore` through `loaders`, as the overlay is (the trust chain: tests/trust)."""

import numpy as np
import pytest
from helpers import PASSPHRASE
from ui_support import FIXED_TIME, SIGNERS, THREADS, overlay_for_tests, send, unlock

from appliance.journal import read_session
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.store import ActiveItem, InstallRecord
from appliance.ui import ApplianceApp, ChatCore
from appliance.ui.widgets import ChatMessage, StatusBar
from appliance.vault import Vault

STRENGTH = 60.0  # a unit direction at block 15 this strong changes a greedy reply of the embedded model


def control_for_tests(model) -> ActiveItem:
    """A fresh copy each call: a kill zeroes the directions of the one loaded."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal(576).astype(np.float32)
    vector = ControlVector({15: v / np.linalg.norm(v)}, STRENGTH, model.sha256)
    return ActiveItem(vector, InstallRecord("terse", "control-vector", 1, "cd" * 32, SIGNERS, FIXED_TIME, FIXED_TIME))


@pytest.fixture
def make_chat(home, model, tmp_path):
    cores = []

    def make(overlay: bool, control: bool) -> ApplianceApp:
        core = ChatCore(
            home,
            model,
            Runtime(model, n_ctx=2048, n_threads=THREADS),
            settings=GREEDY,
            max_tokens=16,
            loaders={
                **({Overlay.KIND: lambda vault: overlay_for_tests(model)} if overlay else {}),
                **({ControlVector.KIND: lambda vault: control_for_tests(model)} if control else {}),
            },
        )
        cores.append(core)
        return ApplianceApp(core, export_dir=tmp_path)

    yield make
    for core in cores:
        core.close()


async def test_ctrl_t_switches_the_control_vector_and_the_bar_names_both(vault_home, make_chat, reference_runtime, model):
    app = make_chat(overlay=True, control=True)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        status = app.screen.query_one(StatusBar)
        assert status.overlay_on is True and status.control_on is False  # the vector starts off, as in `ask`
        bar = str(status.render())
        assert "overlay  ON  care v1" in bar and "control  OFF  terse v1 strength 60" in bar
        await pilot.press("ctrl+t")
        assert status.control_on is True and "control  ON  terse v1" in str(status.render())
        await send(pilot, "Name three colours.")
        reply = app.screen.query(ChatMessage)[1].body.source
        await pilot.press("ctrl+t")
        assert status.control_on is False
        sid = app.core.status().session_id

    def fresh(control_on: bool) -> str:
        vector = control_for_tests(model).weights if control_on else None
        session = Session.switched_on(reference_runtime, overlay_for_tests(model).weights, vector, settings=GREEDY)
        return session.generate("Name three colours.", max_tokens=16).text

    assert reply == fresh(True) and reply != fresh(False)
    records = read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)
    assert [r["kind"] for r in records] == ["control-toggle", "message", "message", "control-toggle"]
    assert [r["on"] for r in (records[0], records[3])] == [True, False] and records[3]["after_messages"] == 2
    assert records[2]["control"]["on"] is True and records[2]["control"]["strength"] == STRENGTH
    assert records[2]["overlay"]["on"] is True


async def test_ctrl_t_without_a_control_vector_says_so(vault_home, make_chat):
    app = make_chat(overlay=True, control=False)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        status = app.screen.query_one(StatusBar)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert status.control_on is None and "control" not in str(status.render())
        assert any("no control vector is installed" in str(n.message) for n in app._notifications)


async def test_the_meter_measures_the_control_vector_alone(vault_home, make_chat):
    app = make_chat(overlay=False, control=True)
    async with app.run_test() as pilot:
        await unlock(pilot, PASSPHRASE)
        status = app.screen.query_one(StatusBar)
        await pilot.press("f3")
        await send(pilot, "Name three colours.")
        assert status.divergence is None  # both off: the reply is the base's
        await pilot.press("ctrl+t")
        await send(pilot, "And three animals?")
        assert status.divergence is not None and status.divergence.positions > 0 and status.divergence.max > 0
