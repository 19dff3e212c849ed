"""Fixtures for the vault, journal, erase and kill-switch tests: a state dir with a vault, a passphrase file."""

import pytest
from helpers import PASSPHRASE, make_vault_home

from appliance.vault import Vault


@pytest.fixture
def passphrase_file(tmp_path, monkeypatch):
    """The documented non-interactive source, exported so every CLI call in the test finds it."""
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE.encode() + b"\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(path))
    return path


@pytest.fixture
def vault_home(home, passphrase_file):
    """An initialised state dir with a vault (created in process: the CLI path has its own tests)."""
    return make_vault_home(home)


@pytest.fixture
def vault(vault_home):
    v = Vault.unlock(vault_home, PASSPHRASE.encode())
    yield v
    v.zeroize()
