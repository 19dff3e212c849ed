"""The image tier (`./run test --image`, marker `image`): the real image, built from this checkout,
carried as a signed bundle, imported into a fresh container storage and run with no network.

Costs (measured on 2 cores, docs/procedures.md section 11): the first run debootstraps the base
and compiles the portable llama-cpp-python wheel; both are cached in image/cache/ (ignored by git)
and later runs only rebuild the image. Needs root, podman, skopeo and debootstrap (image/setup).
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ok

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]
QUESTION = "What colour is the sky on a clear day?"


def run(*cmd, env=None, timeout=3000) -> subprocess.CompletedProcess:
    """A build or container command, with the usual umask (the tests' own is 077: tests/conftest.py)."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                       umask=0o022)  # fmt: skip
    assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


def storage_conf(directory: Path) -> Path:
    """A container storage of its own (vfs: works in any nesting), so the machine's is never touched."""
    directory.mkdir(parents=True)
    conf = directory / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{directory}/graph"\nrunroot = "{directory}/run"\n')
    return conf


def appliance_in_container(tmp_path: Path, image: str, env=None) -> Callable[..., str]:
    """`appliance ARGS` in IMAGE with no network, read-only, no capabilities; its state in a volume of its own."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 1000, 1000)
    (tmp_path / "pp").write_text("image test passphrase\n")
    os.chown(tmp_path / "pp", 1000, 1000)

    def in_container(*args: str) -> str:
        return run("podman", "run", "--rm", "--network=none", "--read-only", "--cap-drop=all", "--security-opt", "no-new-privileges",
                   "-v", f"{state}:/var/lib/appliance", "-v", f"{tmp_path / 'pp'}:/run/pp:ro",
                   "-e", "APPLIANCE_PASSPHRASE_FILE=/run/pp", image, *args, env=env).stdout  # fmt: skip

    return in_container


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """image/build from this checkout into a build storage, packed as v1 and v2 (the same image twice)."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "skopeo", "debootstrap")):
        pytest.fail("the image tier needs root and image/setup's tools (podman, skopeo, debootstrap)")
    tmp = tmp_path_factory.mktemp("image")
    env = {"CONTAINERS_STORAGE_CONF": str(storage_conf(tmp / "build-storage")), "PYTHON": sys.executable}
    digest = run(ROOT / "image" / "build", "--out", tmp / "out", "--pack", "1", env=env).stdout.strip().splitlines()[-1]
    out = tmp / "out"
    run(
        sys.executable,
        "-m",
        "appliance",
        "image",
        "pack",
        out / "layout",
        "--version",
        "2",
        "--out",
        out / "appliance-v2.bundle",
    )
    return out, digest, json.loads((out / "build-info.json").read_text())


def test_the_built_image_is_signed_imported_run_offline_and_rolled_back(built, keys, pinned_home, tmp_path, monkeypatch):
    out, digest, info = built
    assert digest == info["manifest_digest"] and digest.startswith("sha256:")
    for version in (1, 2):
        for signer in ("alice", "bob"):
            ok(
                "bundle",
                "sign",
                str(out / f"appliance-v{version}.bundle"),
                "--key",
                keys.fpr[signer],
                "--gnupghome",
                str(keys.home),
            )

    # The appliance side: its pinned home, and a container storage that has never seen the image.
    home = tmp_path / "home"
    shutil.copytree(pinned_home[0], home, symlinks=True)
    storage = storage_conf(tmp_path / "storage")
    env = {"APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(pinned_home[1]), "CONTAINERS_STORAGE_CONF": str(storage),
           "CONTAINERS_CONF": str(ROOT / "image" / "containers.conf")}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    imported = ok("update", "import", str(out / "appliance-v1.bundle"))
    assert "installed image appliance v1" in imported and "loaded as localhost/appliance:1" in imported
    ok("update", "import", str(out / "appliance-v2.bundle"))

    in_container = appliance_in_container(tmp_path, "localhost/appliance:active")
    in_container("init")
    answer = in_container("ask", QUESTION, "--max-tokens", "8", "--temperature", "0")
    assert answer.strip()

    # Roll back to v1: the state volume carries over unchanged and the older image answers the same.
    assert "image appliance: v2 -> v1" in ok("image", "rollback")
    assert ok("image", "list").splitlines()[0].startswith("* appliance v1")
    assert in_container("ask", QUESTION, "--max-tokens", "8", "--temperature", "0") == answer


CUDA_MODULE = ROOT / "image" / "cache" / "cuda" / "libggml-cuda.so"


@pytest.mark.skipif(
    not CUDA_MODULE.exists(), reason="no CUDA module cached: image/cuda-module compiles it (no card or installed CUDA needed)"
)
def test_the_cuda_variant_carries_the_backend_and_answers_on_the_cpu_where_no_card_is(tmp_path):
    """No card here: the variant must still run, on the CPU, and say why (the card itself: tests/gpu)."""
    env = {"CONTAINERS_STORAGE_CONF": str(storage_conf(tmp_path / "build-storage")), "PYTHON": sys.executable,
           "CONTAINERS_CONF": str(ROOT / "image" / "containers.conf")}  # fmt: skip
    run(ROOT / "image" / "build", "--cuda", "--out", tmp_path / "out", env=env)
    info = json.loads((tmp_path / "out" / "build-info.json").read_text())
    module_sha = run("sha256sum", CUDA_MODULE).stdout.split()[0]
    assert info["cuda_module_sha256"] == module_sha
    assert "RUNPATH" not in run("readelf", "-d", CUDA_MODULE).stdout, "a folder of the build machine it would load libraries from"
    assert "selftest: cuda: libggml-cuda.so links resolve" in (tmp_path / "out" / "podman-build.log").read_text()

    in_container = appliance_in_container(tmp_path, "localhost/appliance:build", env)
    in_container("init")
    device = next(line for line in in_container("status").splitlines() if line.startswith("device:"))
    assert device.startswith("device:  cpu (libggml-cuda.so found no usable card"), device
    assert in_container("ask", QUESTION, "--max-tokens", "8", "--temperature", "0").strip()
