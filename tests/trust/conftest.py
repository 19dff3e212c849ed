"""Real GnuPG keys made in temp dirs, bundles built with the library, appliance homes made with the real CLI.

Keys (session-scoped, one build-station GNUPGHOME):
alice, bob (pinned), carol (in the appliance keyring, not pinned), old
(pinned, expired), rev (pinned, revoked). Threshold 2.
"""

import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pytest

from helpers import appliance

from appliance.overlay.files import Overlay, overlay_files
from appliance.overlay.params import OverlayParams
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.trust.manifest import format_time

BASE_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PASSPHRASE = "correct horse battery staple"


def gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode", "loopback", *args],
        input=input, capture_output=True, check=True,
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


def make_bundle(keys: Keys, out: Path, *, name="care", version=1, signers=("alice", "bob"), seed=1,
                base=BASE_SHA, binds=BASE_SHA, created=None, expires=None) -> Path:
    create_bundle(out, kind="overlay", name=name, version=version, artifacts=overlay_dir(out.parent, seed, base),
                  binds_base=binds, created=created, expires=expires)
    for s in signers:
        sign_bundle(out, keys.fpr[s], keys.home)
    return out


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


@pytest.fixture(scope="session")
def pinned_home(keys, tmp_path_factory):
    """An initialised appliance home with alice, bob, old and rev pinned, carol in the keyring unpinned."""
    tmp = tmp_path_factory.mktemp("pinned")
    home = tmp / "home"
    pp = tmp / "passphrase"
    pp.write_text(PASSPHRASE)
    env = {"APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(pp)}
    assert appliance("init", env=env).returncode == 0
    for name in ("alice", "bob", "old", "rev"):
        key = revoked_public_key(keys, tmp) if name == "rev" else keys.public(name, tmp)
        r = appliance("trust", "add", str(key), "--fingerprint", keys.fpr[name], env=env)
        assert r.returncode == 0, r.stderr
    gpg(home / "trust" / "gnupg", "--import", str(keys.public("carol", tmp)))
    subprocess.run(["gpgconf", "--homedir", str(home / "trust" / "gnupg"), "--kill", "all"], capture_output=True)
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
