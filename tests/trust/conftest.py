"""Real GnuPG keys made in temp dirs, bundles built with the library, appliance homes made with the real CLI.

Keys (session-scoped, one build-station GNUPGHOME):
alice, bob (pinned), carol (in the appliance keyring, not pinned), old
(pinned, expired), rev (pinned, revoked). Threshold 2. The helpers live in `bundles.py`.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from bundles import Keys, fingerprint, gpg, revoked_public_key
from helpers import PASSPHRASE, appliance, make_vault_home

from appliance.store.layout import Store
from appliance.vault import Vault


@pytest.fixture(scope="session")
def keys():
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    home.chmod(0o700)
    fpr = {}
    for name in ("alice", "bob", "carol", "rev"):
        gpg(home, "--quick-gen-key", f"{name} <{name}@example>", "ed25519", "sign", "2y")
        fpr[name] = fingerprint(home, f"{name}@example")
    # Valid in 2020 for one day: expired now.
    gpg(home, "--faked-system-time", "20200101T000000", "--quick-gen-key", "old <old@example>", "ed25519", "sign", "1d")
    fpr["old"] = fingerprint(home, "old@example")
    yield Keys(home, fpr)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pinned_home(keys, tmp_path_factory):
    """An initialised appliance home with alice, bob, old and rev pinned, carol in the keyring unpinned."""
    tmp = tmp_path_factory.mktemp("pinned")
    home = tmp / "home"
    pp = tmp / "passphrase"
    pp.write_text(PASSPHRASE)
    env = {"APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(pp)}
    make_vault_home(home)
    for name in ("alice", "bob", "old", "rev"):
        key = revoked_public_key(keys, tmp) if name == "rev" else keys.public(name, tmp)
        r = appliance("trust", "add", str(key), "--fingerprint", keys.fpr[name], env=env)
        assert r.returncode == 0, r.stderr
    # carol's key in the keyring but not pinned: only the appliance writes the (sealed) keyring.
    carol = keys.public("carol", tmp).read_bytes()
    sealed = Vault.unlock(home, PASSPHRASE.encode())
    try:
        Store.unlocked(sealed).trust()._change_keyring(lambda g: g.import_keys(carol))
    finally:
        sealed.zeroize()
    return home, pp


@pytest.fixture
def home(pinned_home, tmp_path, monkeypatch):
    """A private copy of the pinned home for one test (APPLIANCE_HOME points at it)."""
    src, pp = pinned_home
    dst = tmp_path / "home"
    shutil.copytree(src, dst, symlinks=True)
    monkeypatch.setenv("APPLIANCE_HOME", str(dst))
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(pp))
    return dst


@pytest.fixture
def vault(home):
    """The home's vault, unlocked, for imports made in process (an overlay is encrypted under it)."""
    v = Vault.unlock(home, PASSPHRASE.encode())
    yield v
    v.zeroize()
