"""`fsutil.discard`: keyless ciphertext leaves its place at once, whatever its size; the unlink runs detached."""

import time

import pytest

from appliance.fsutil import TRASH_DIR, discard

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`


def test_discard_moves_files_and_folders_out_of_sight_and_says_which_existed(tmp_path):
    home = tmp_path / "home"
    (home / "journal").mkdir(parents=True)
    (home / "journal" / "s.journal").write_bytes(b"x" * 4096)
    (home / "store" / "objects" / "a").mkdir(parents=True)
    (home / "store" / "objects" / "a" / "blob").write_bytes(b"y")
    paths = [home / "journal", home / "store" / "objects" / "a", home / "trust"]  # trust/ was never made

    assert discard(home, paths) == paths[:2]
    assert not (home / "journal").exists() and not (home / "store" / "objects" / "a").exists()
    assert (home / "store" / "objects").is_dir()  # only what was named goes
    assert {p.name for p in home.iterdir()} == {"store", TRASH_DIR}  # the batch itself may be gone already


def test_the_detached_unlink_runs_the_systems_rm_never_one_found_through_path(tmp_path, monkeypatch):
    planted = tmp_path / "bin"
    planted.mkdir()
    marker = tmp_path / "planted-rm-ran"
    (planted / "rm").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (planted / "rm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{planted}:/usr/bin:/bin")
    monkeypatch.chdir(planted)  # and not from where the command was run
    home = tmp_path / "home"
    (home / "journal").mkdir(parents=True)

    discard(home, [home / "journal"])

    deadline = time.monotonic() + 30
    while any((home / TRASH_DIR).iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any((home / TRASH_DIR).iterdir())  # the real rm removed the batch
    assert not marker.exists()
