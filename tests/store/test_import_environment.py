"""`update import` on a machine that cannot hold what it imports: a disk that fills up at each step
that writes (RLIMIT_FSIZE), and a read-only state dir. Refused (exit 3), one line, the state dir
byte-identical; the same bundle imports once there is room."""

import os
import shutil

import pytest
from bundles import make_bundle
from helpers import appliance, error_line, read_only, tree_digest, with_file_size_limit


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
