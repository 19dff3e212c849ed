"""Fixtures for the terminal UI: a vault home, the app on the real embedded model, a test overlay.

The overlay is a seeded random Takens-LoRA overlay handed to `ChatCore` through its
`overlay_loader` argument (the product always loads the store's active overlay, re-verified): the
UI tests need an overlay whose effect is visible, not the trust chain, which tests/trust covers.
"""

import asyncio
import inspect
from datetime import datetime, timezone

import pytest

from appliance import state
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime
from appliance.store import ActiveOverlay, Provenance
from appliance.ui import ApplianceApp, ChatCore
from appliance.vault import Vault

PASSPHRASE = "correct horse battery staple"
SIGNERS = ("A1B2C3D4E5F60718293A4B5C6D7E8F9012345678", "0FEDCBA9876543210FEDCBA9876543210FEDCBA9")
# One llama.cpp thread: with two threads on two cores, any other busy process makes llama.cpp's
# spinning thread barrier collapse to ~0.5 tok/s (measured); one thread keeps ~55 tok/s.
THREADS = 1
FIXED_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests in a fresh event loop (Textual's Pilot is async; no asyncio plugin is pinned)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


def overlay_for_tests(model) -> ActiveOverlay:
    """A fresh copy each call: a kill or an erase zeroes the weights of the one loaded."""
    params = OverlayParams.random(576, seed=1, b_scale=0.1)  # 0.2 makes the model end its first reply at once
    return ActiveOverlay(Overlay(params, model.sha256),
                         Provenance("care", "overlay", 1, "ab" * 32, SIGNERS, FIXED_TIME, FIXED_TIME))


@pytest.fixture(scope="session")
def reference_runtime(model):
    """A second, independent llama.cpp context for "a fresh session in that state"."""
    rt = Runtime(model, n_ctx=2048, n_threads=THREADS)
    yield rt
    rt.close()


@pytest.fixture
def vault_home(home):
    state.initialise(home)
    Vault.create(home, PASSPHRASE.encode()).zeroize()
    return home


@pytest.fixture
def make_app(home, model, tmp_path):
    """make_app(overlay=True, max_tokens=24, audit=False) -> an ApplianceApp; its core is closed after the test."""
    cores = []

    def make(overlay: bool = True, max_tokens: int = 24, **kw) -> ApplianceApp:
        core = ChatCore(home, model, settings=GREEDY, max_tokens=max_tokens, n_ctx=2048, n_threads=THREADS,
                        overlay_loader=(lambda vault: overlay_for_tests(model)) if overlay else None)
        cores.append(core)
        return ApplianceApp(core, export_dir=tmp_path, **kw)

    yield make
    for core in cores:
        core.close()
