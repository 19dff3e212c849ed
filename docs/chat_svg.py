"""Regenerate docs/chat.svg, the README's picture of the chat: `.venv/bin/python docs/chat_svg.py`.

A real greedy exchange on the embedded model with the demo overlay (`appliance init --demo`:
signed by two throwaway demo keys, imported through the trust chain) and the divergence meter
on, in a throwaway state dir.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.ui import ApplianceApp, ChatCore
from appliance.ui.widgets import ChatMessage

OUT = Path(__file__).resolve().parent / "chat.svg"
PASSPHRASE = "demo passphrase"
PROMPT = "How should I store a first-aid kit?"


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    home, passphrase_file = tmp / "home", tmp / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    passphrase_file.chmod(0o600)  # a passphrase file others may read is refused
    os.environ["APPLIANCE_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "appliance", "init", "--demo", "--passphrase-file", str(passphrase_file)], check=True)
    model = verify_pinned(embedded_pin())
    core = ChatCore(home, model, Runtime(model, n_threads=1), settings=GREEDY, max_tokens=80)
    app = ApplianceApp(core)
    async with app.run_test(size=(100, 32)) as pilot:
        app.screen.query_one("#passphrase").value = PASSPHRASE
        await pilot.press("enter", "f3")
        app.screen.query_one("#prompt").text = PROMPT
        await pilot.press("enter")
        while len(app.screen.query(ChatMessage)) < 2 or app.screen.worker is not None:
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(OUT.name, str(OUT.parent))
    core.close()
    core.runtime.close()
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
