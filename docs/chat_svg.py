"""Regenerate docs/chat.svg, the README's picture of the chat: `.venv/bin/python docs/chat_svg.py`.

A real greedy exchange on the embedded model, with the divergence meter on, in a throwaway
state dir. The overlay is a seeded random one standing in for a signed bundle (name `demo`,
placeholder signer fingerprints): the picture shows the UI, not a trained overlay.
"""

import asyncio
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from appliance import state
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.sampler import GREEDY
from appliance.store import ActiveOverlay, Provenance
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.ui import ApplianceApp, ChatCore
from appliance.ui.widgets import ChatMessage
from appliance.vault import Vault

OUT = Path(__file__).resolve().parent / "chat.svg"
PASSPHRASE = b"demo passphrase"


def demo_overlay(model) -> ActiveOverlay:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    overlay = Overlay(OverlayParams.random(576, seed=1, b_scale=0.1), model.sha256)
    return ActiveOverlay(overlay, Provenance("demo", "overlay", 1, "0" * 64, ("A" * 40, "B" * 40), when, when))


async def main() -> None:
    home = Path(tempfile.mkdtemp()) / "home"
    state.initialise(home)
    Vault.create(home, PASSPHRASE).zeroize()
    model = verify_pinned(embedded_pin())
    core = ChatCore(home, model, settings=GREEDY, max_tokens=80, n_threads=1, overlay_loader=lambda vault: demo_overlay(model))
    app = ApplianceApp(core)
    async with app.run_test(size=(100, 32)) as pilot:
        app.screen.query_one("#passphrase").value = PASSPHRASE.decode()
        await pilot.press("enter", "f3")
        app.screen.query_one("#prompt").text = "Give me three tips for a night watch, as a list."
        await pilot.press("enter")
        while len(app.screen.query(ChatMessage)) < 2 or app.screen.worker is not None:
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(str(OUT.name), str(OUT.parent))
    core.close()
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
