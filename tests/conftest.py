"""Shared fixtures. The whole suite runs offline: any socket connect fails the test that made it."""

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# What the tests write is theirs alone, as an operator's passphrase file must be (the appliance
# refuses one that others can read); tests of the appliance's own modes set a looser umask.
os.umask(0o077)

_network_attempts: list[str] = []


def _no_network(event: str, args) -> None:
    if event == "socket.connect":
        _network_attempts.append(repr(args[1]))
        raise PermissionError(f"network access attempted in an offline test: {args[1]!r}")


sys.addaudithook(_no_network)  # audit hooks cannot be removed: this holds for the whole run


@pytest.fixture(autouse=True)
def _fail_on_network_attempt():
    before = len(_network_attempts)
    yield
    assert len(_network_attempts) == before, f"socket.connect attempted: {_network_attempts[before:]}"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, not yet initialised APPLIANCE_HOME for this test."""
    path = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def model():
    from appliance.trust.builtin import embedded_pin, verify_pinned

    return verify_pinned(embedded_pin())


@pytest.fixture(scope="session")
def runtime(model):
    """One loaded model for the whole run (the decoder keeps its cache consistent across sessions)."""
    from appliance.runtime.session import Runtime

    rt = Runtime(model, n_ctx=2048)
    yield rt
    rt.close()
