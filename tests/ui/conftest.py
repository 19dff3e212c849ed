"""Fixtures for the terminal UI: a vault home, the app on the real embedded model (see ui_support)."""

import asyncio
import inspect

import pytest
from helpers import make_vault_home
from ui_support import THREADS, overlay_for_tests

from appliance.overlay.files import Overlay
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime
from appliance.ui import ApplianceApp, ChatCore


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests in a fresh event loop (Textual's Pilot is async; no asyncio plugin is pinned)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture(scope="session")
def reference_runtime(model):
    """A second, independent llama.cpp context for "a fresh session in that state"."""
    rt = Runtime(model, n_ctx=2048, n_threads=THREADS)
    yield rt
    rt.close()


@pytest.fixture
def vault_home(home):
    return make_vault_home(home)


@pytest.fixture
def make_app(home, model, tmp_path):
    """make_app(overlay=True, max_tokens=24) -> an ApplianceApp on the real model; its core is closed after the test."""
    cores = []

    def make(overlay: bool = True, max_tokens: int = 24, **kw) -> ApplianceApp:
        core = ChatCore(
            home,
            model,
            Runtime(model, n_ctx=2048, n_threads=THREADS),
            settings=GREEDY,
            max_tokens=max_tokens,
            loaders={Overlay.KIND: lambda vault: overlay_for_tests(model)} if overlay else None,
        )
        cores.append(core)
        return ApplianceApp(core, export_dir=tmp_path, **kw)

    yield make
    for core in cores:
        core.close()
        core.runtime.close()
