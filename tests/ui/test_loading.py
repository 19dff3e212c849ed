"""The chat's loading screen: the base's verification as a moving bar, then the chat's first screen."""

import threading
from contextlib import contextmanager

from textual.widgets import ProgressBar
from ui_support import THREADS, wait_for

from appliance.errors import Refused
from appliance.runtime.session import Runtime
from appliance.store.bases import verify_embedded
from appliance.trust.builtin import embedded_pin
from appliance.ui import ApplianceApp, ChatCore
from appliance.ui.loading import LoadingScreen
from appliance.ui.unlock import UnlockScreen


class HeldHalfway:
    """The loading screen's own steps, held once `at` bytes are reported until the test has looked."""

    def __init__(self, steps, at: int):
        self.steps, self.at, self.done = steps, at, 0
        self.reached, self.go_on = threading.Event(), threading.Event()

    @contextmanager
    def step(self, label, total):
        with self.steps.step(label, total) as advance:

            def counted(n: int) -> None:
                advance(n)
                self.done += n
                if self.done >= self.at and not self.reached.is_set():
                    self.reached.set()
                    self.go_on.wait(60)

            yield counted


async def test_the_chat_shows_the_base_being_verified_then_its_first_screen(vault_home, tmp_path):
    size = embedded_pin().size
    held, cores = [], []

    def load(steps) -> ChatCore:  # what `appliance chat` does, on the real embedded model
        held.append(HeldHalfway(steps, size // 2))
        model = verify_embedded(held[0])
        cores.append(ChatCore(vault_home, model, Runtime(model, n_ctx=2048, n_threads=THREADS)))
        return cores[0]

    app = ApplianceApp(load, export_dir=tmp_path)
    try:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: held and held[0].reached.is_set(), what="half the base hashed")
            screen = app.screen
            assert isinstance(screen, LoadingScreen)
            bar = screen.query_one(ProgressBar)
            # the screen's timer shows what the worker reported (held there: it cannot move past it)
            await wait_for(pilot, lambda: bar.progress >= size // 2, what="the bar at half")
            assert bar.total == size and bar.progress < size
            assert str(screen.query_one("#step").render()).startswith("verify base embedded (")
            held[0].go_on.set()
            await wait_for(
                pilot, lambda: isinstance(app.screen, UnlockScreen) and app.screen.query("#passphrase"), what="the unlock screen"
            )
            await pilot.pause()
            assert app.core is cores[0] and app.load_error is None
    finally:
        for core in cores:
            core.close()
            core.runtime.close()


async def test_a_base_refused_while_loading_ends_the_chat_with_that_error(tmp_path):
    refused = Refused("base x v1 failed verification, nothing was loaded")

    def load(steps) -> ChatCore:
        raise refused

    app = ApplianceApp(load, export_dir=tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: not app.is_running or app.load_error is not None, what="the app to end")
    assert app.load_error is refused
