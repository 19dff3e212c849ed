"""The divergence meter: same reply with or without it, KL stored in the provenance, its cost shown in help."""

from textual.widgets import Markdown
from ui_support import PASSPHRASE, send, unlock

from appliance.journal import read_session
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
