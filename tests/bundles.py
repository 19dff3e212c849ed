"""What the trust and store tests build with: real GnuPG keys in temp dirs, bundles made with the library,
tar surgery, and the fixtures of a home with pinned signers.

Keys (session-scoped, one build-station GNUPGHOME; registered once, by tests/conftest.py):
alice, bob (pinned), carol (in the appliance keyring, not pinned), old (pinned, expired),
rev (pinned, revoked). Threshold 2. tests/trust/ and tests/store/ take `home` (a private copy
of the pinned home) and `vault` from here through their conftest.py.

A plain module (not conftest.py), so test files import it by a name no other test directory uses.
"""

import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from helpers import PASSPHRASE, appliance, make_vault_home

from appliance.overlay.control import ControlVector, control_files
from appliance.overlay.files import Overlay, overlay_files
from appliance.overlay.params import OverlayParams
from appliance.store.layout import Store
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.utc import format_time
from appliance.vault import Vault

BASE_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode", "loopback", *args],
        input=input,
        capture_output=True,
        check=True,
    ).stdout


def fingerprint(home: Path, uid: str) -> str:
    out = gpg(home, "--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


@dataclass
class Keys:
    home: Path  # the build station's GNUPGHOME
    fpr: dict[str, str]

    def public(self, name: str, tmp: Path) -> Path:
        path = tmp / f"{name}.asc"
        path.write_bytes(gpg(self.home, "--export", "--armor", self.fpr[name]))
        return path


def revoked_public_key(keys: Keys, tmp: Path) -> Path:
    """rev's public key with its revocation certificate (gpg wrote it at key creation) applied.

    Done in a scratch keyring, so the build station can still sign with rev: the
    appliance must refuse the signature because it knows the key is revoked.
    """
    scratch = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    scratch.chmod(0o700)
    cert = (keys.home / "openpgp-revocs.d" / f"{keys.fpr['rev']}.rev").read_text()
    gpg(scratch, "--import", str(keys.public("rev", tmp)))
    gpg(scratch, "--import", input=cert.replace(":-----BEGIN", "-----BEGIN").encode())
    path = tmp / "rev-revoked.asc"
    path.write_bytes(gpg(scratch, "--export", "--armor", keys.fpr["rev"]))
    subprocess.run(["gpgconf", "--homedir", str(scratch), "--kill", "all"], capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return path


def overlay_dir(tmp: Path, seed: int, base: str = BASE_SHA) -> list[Path]:
    d = tmp / f"overlay-{seed}-{base[:8]}"
    d.mkdir(exist_ok=True)
    for name, data in overlay_files(Overlay(OverlayParams.random(576, seed=seed), base)).items():
        (d / name).write_bytes(data)
    return [d / "overlay.json", d / "overlay.safetensors"]


def make_bundle(
    keys: Keys,
    out: Path,
    *,
    name="care",
    version=1,
    signers=("alice", "bob"),
    seed=1,
    base=BASE_SHA,
    binds=BASE_SHA,
    created=None,
    expires=None,
) -> Path:
    artifacts = overlay_dir(out.parent, seed, base)
    return _signed(keys, out, "overlay", name, version, artifacts, binds, created, expires, signers)


def _signed(keys: Keys, out: Path, kind, name, version, artifacts, binds, created, expires, signers) -> Path:
    create_bundle(
        out, kind=kind, name=name, version=version, artifacts=artifacts, binds_base=binds, created=created, expires=expires
    )
    for s in signers:
        sign_bundle(out, keys.fpr[s], keys.home)
    return out


def make_not_a_model_bundle(keys: Keys, out: Path, *, name: str, version: int) -> Path:
    """A base-model bundle signed by alice and bob whose GGUF is not one: for refusals decided before the probe."""
    model = out.parent / "model.gguf"
    model.write_bytes(b"not really a model")
    return _signed(keys, out, "base-model", name, version, [model], None, None, None, ("alice", "bob"))


def control_dir(
    tmp: Path, seed: int, base: str = BASE_SHA, hidden: int = 576, layers=(15,), bad: str = "", strength: float = 2.0
) -> list[Path]:
    """control.json + control.safetensors of a random direction per block (unit norm, at `strength`).

    `bad`: "nan" (a non-finite component), "short" (a direction shorter than the hidden size the JSON says)."""
    d = tmp / f"control-{seed}-{base[:8]}-{hidden}-{'-'.join(map(str, layers))}{bad}{'' if strength == 2.0 else strength}"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = {}
    for layer in layers:
        v = rng.standard_normal(hidden).astype(np.float32)
        directions[layer] = v / np.linalg.norm(v)
    files = control_files(ControlVector(directions, strength, base, {"method": "test", "seed": seed}))
    if bad:
        from safetensors.numpy import save

        broken = dict(directions)
        first = layers[0]
        broken[first] = broken[first][: hidden - 1] if bad == "short" else np.where(np.arange(hidden) == 3, np.nan, broken[first])
        files["control.safetensors"] = save({f"direction.{n}": np.asarray(v, dtype=np.float32) for n, v in broken.items()})
    for name, data in files.items():
        (d / name).write_bytes(data)
    return [d / "control.json", d / "control.safetensors"]


def make_control_bundle(
    keys: Keys,
    out: Path,
    *,
    name="terse",
    version=1,
    signers=("alice", "bob"),
    seed=1,
    base=BASE_SHA,
    binds=BASE_SHA,
    hidden=576,
    layers=(15,),
    bad="",
    strength=2.0,
    created=None,
    expires=None,
) -> Path:
    """A signed bundle of kind control-vector (defaults: bound to the embedded base, block 15)."""
    artifacts = control_dir(out.parent, seed, base, hidden, layers, bad, strength)
    return _signed(keys, out, "control-vector", name, version, artifacts, binds, created, expires, signers)


def raw_signature(keys: Keys, signer: str, data: bytes, *extra: str) -> bytes:
    return gpg(keys.home, *extra, "--local-user", keys.fpr[signer], "--detach-sign", "--armor", input=data)


def members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def write_tar(out: Path, entries) -> Path:
    """entries: (TarInfo, bytes) pairs, written as they are (whatever they claim to be)."""
    with tarfile.open(out, "w") as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, BytesIO(data) if info.isfile() else None)
    return out


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def utc(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def iso(days: float) -> str:
    return format_time(utc(days))


def set_floor(home: Path, floor: datetime) -> None:
    """Move the store's time floor (as an accepted bundle created then would), through the vault's seal."""
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        store = Store.unlocked(vault)
        store.write_state(replace(store.read_state(), floor=floor))


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


@pytest.fixture(name="home")
def pinned_copy(pinned_home, tmp_path, monkeypatch):
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
