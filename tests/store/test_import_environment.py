"""`update import` on a machine that cannot hold what it imports: a disk that fills up at each step
that writes (RLIMIT_FSIZE), and a read-only state dir. Refused (exit 3), one line, the state dir
byte-identical; the same bundle imports once there is room."""

import os
import re
import shutil
from pathlib import Path

import pytest
from bundles import make_bundle
from helpers import appliance, error_line, read_only, tree_digest, with_file_size_limit

from appliance.trust.bundle import create_bundle, sign_bundle


@pytest.fixture(scope="module")
def good(keys, tmp_path_factory):
    return make_bundle(keys, tmp_path_factory.mktemp("good") / "care-v1.bundle")


def _one_error(r, *words):
    line = error_line(r, 3, "environment-refused")
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"


@pytest.mark.parametrize(
    "fsize",
    [
        0,  # the first file written: the scratch copy of the trust store's keyring
        4 << 10,  # above the keyring, below the overlay's ciphertext in staging
    ],
)
def test_import_on_a_full_disk_is_refused_and_changes_nothing(home, good, fsize):
    before = tree_digest(home)
    r = with_file_size_limit("update", "import", str(good), fsize=fsize)
    _one_error(r, "File too large", f"nothing was changed in {home}")
    assert tree_digest(home) == before
    r = appliance("update", "import", str(good))
    assert r.returncode == 0, r.stderr


def test_import_into_a_read_only_state_dir_is_refused(home, good):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare (a mode like 0500 does not stop root)")
    before = tree_digest(home)
    r = appliance("update", "import", str(good), prefix=read_only(home))
    _one_error(r, f"cannot write {home}/", "Read-only file system")
    assert tree_digest(home) == before


def _on_small_disk(size: int, home: Path, after: Path) -> list[str]:
    """A `prefix` for `appliance()`: the command runs in its own mount namespace in which `home` is a
    tmpfs of `size` bytes holding a copy of the state; what that disk holds afterwards is copied to
    `after` (a new directory). The namespace and its mount end with the command. Needs root (CAP_SYS_ADMIN)."""
    script = """size=$1 home=$2 after=$3; shift 3
cp -a "$home" "$after" && mount -t tmpfs -o size="$size" tmpfs "$home" && cp -a "$after"/. "$home"/ || exit 99
"$@"; rc=$?
rm -rf "$after" && cp -a "$home" "$after" && exit $rc"""
    return ["unshare", "--mount", "sh", "-c", script, "sh", str(size), str(home), str(after)]


def test_import_larger_than_the_free_disk_is_refused_before_writing(home, keys, good, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a tmpfs in a mount namespace needs root and unshare")
    model = tmp_path / "model.gguf"
    with open(model, "wb") as f:
        f.truncate(48 << 20)  # the room is counted before its first byte is read: no GGUF needed
    big = tmp_path / "big.bundle"
    create_bundle(big, kind="base-model", name="big", version=1, artifacts=[model])
    for signer in ("alice", "bob"):
        sign_bundle(big, keys.fpr[signer], keys.home)
    before = tree_digest(home)
    r = appliance("update", "import", str(big), prefix=_on_small_disk(40 << 20, home, tmp_path / "after"))
    line = error_line(r, 3, "no-room-for-import")
    needed, free = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) (?:bytes|are free)", line))
    assert needed > 48 << 20 > 40 << 20 > free > 0, line
    assert tree_digest(tmp_path / "after") == before
    r = appliance("update", "import", str(good), prefix=_on_small_disk(40 << 20, home, tmp_path / "after2"))
    assert r.returncode == 0, r.stderr  # one that fits imports on the same disk
