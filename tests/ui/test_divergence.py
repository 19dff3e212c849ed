"""The divergence meter: same reply with or without it, KL stored in the provenance, its cost shown in help."""

import threading

import pytest
from helpers import PASSPHRASE
from textual.widgets import Markdown
from ui_support import send, unlock

from appliance.journal import read_session
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.llama import DecodeStopped
from appliance.runtime.session import Runtime
from appliance.ui.divergence import AuditMeter
from appliance.ui.widgets import ChatMessage, StatusBar
from appliance.vault import Vault

PROMPT = "Write a short story about a lighthouse."


async def test_meter_measures_without_changing_the_reply(vault_home, make_app):
    app = make_app(max_tokens=64)
    async with app.run_test(size=(120, 40)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, PROMPT)
        plain = app.screen.query(ChatMessage)[1].body.source
        await pilot.press("f5", "f3")  # a fresh session, meter on
        await send(pilot, PROMPT)
        audited = app.screen.query(ChatMessage)[1]
        div = app.screen.query_one(StatusBar).divergence
        assert audited.body.source == plain  # the meter only watches
        assert f"KL rmse {div.rmse:.3f} max {div.max:.3f}" in str(audited.header.render())
        assert div.positions >= len(plain.split()) and 0 < div.rmse <= div.max
        sid = app.core.status().session_id
        await pilot.press("f2")  # overlay off: nothing to measure, and no stale number on the reply
        await send(pilot, PROMPT)
        assert "KL" not in str(app.screen.query(ChatMessage)[3].header.render())
        await pilot.press("f1")
        cost = app.core.audit_cost()
        assert (
            "tok/s without the meter" in app.screen.query_one(Markdown).source and cost in app.screen.query_one(Markdown).source
        )
        print(f"\ndivergence meter cost: {cost}")
    user, reply, *_ = read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)
    assert user["divergence"] is None
    assert reply["divergence"] == {"measure": "kl(overlay||base)", "positions": div.positions, "rmse": div.rmse, "max": div.max}


def test_a_kill_stops_the_meters_shadow_prefill_too(model):
    """The meter's second engine prefills the whole prompt again: a kill that lands there stops it too."""
    runtime = Runtime(model, n_ctx=2048)
    audit = AuditMeter.install(runtime)
    try:
        audit.enabled = True
        overlay = [Overlay(OverlayParams.random(576, seed=1, b_scale=0.05), model.sha256)]
        long = " ".join(f"Note {i}: the keeper lit the lamp and logged the weather." for i in range(90))
        tokens = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": long}]))
        assert len(tokens) > 2 * runtime.engine.n_batch
        runtime.decoder.prefill(tokens[:8], overlay)  # the shadow engine exists from here
        kill = threading.Event()
        shadow_prefill = audit.base.prefill

        def killed_as_the_shadow_starts(*args):
            kill.set()  # the reply's own prefill is done: only the shadow's can still be stopped
            return shadow_prefill(*args)

        audit.base.prefill = killed_as_the_shadow_starts
        with runtime.engine.stop_on(kill), pytest.raises(DecodeStopped):
            runtime.decoder.prefill(tokens, overlay)
        assert audit.divergence() is None  # nothing measured for a reply that was stopped
    finally:
        audit.close()
        runtime.close()
