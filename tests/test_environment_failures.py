"""When the machine cannot hold the state, or the command line does not hold text.

A file where the state dir should be, a read-only mount, a disk that fills up (RLIMIT_FSIZE), a
prompt that is not UTF-8: each is one `error:` line naming the path and the OS's reason, with its
documented exit code and reason code (3 `[environment-refused]`, 2 `[usage]`, never 1: none is a
bug), and the state is as it was.
`init` is all or nothing: a failed one leaves nothing that claims to be initialised, and running
it again finishes the job.
"""

import os
import shutil
import subprocess

import pytest
from helpers import PASSPHRASE, TEST_KDF, appliance, error_line, make_vault_home, read_only, tree_digest, with_file_size_limit

from appliance import state
from appliance.vault import Vault


@pytest.fixture
def passphrase_file(tmp_path, monkeypatch):
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(path))
    return path


@pytest.fixture
def initialised(home, passphrase_file):
    return make_vault_home(home)


def one_error(r: subprocess.CompletedProcess, code: int, reason: str, *words: str) -> str:
    line = error_line(r, code, reason)
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


@pytest.fixture
def root_for_mounts():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare (a mode like 0500 does not stop root)")


# -- a state dir that is not a directory -------------------------------------------------


@pytest.mark.parametrize("command", [("init",), ("status",), ("ask", "hello"), ("logs", "list")])
def test_state_dir_that_is_a_file_is_refused(home, passphrase_file, command):
    home.write_bytes(b"someone's file")
    r = appliance(*command)
    one_error(r, 3, "environment-refused", str(home), "not a directory")
    assert home.read_bytes() == b"someone's file"


def test_state_dir_below_a_file_is_refused(home, passphrase_file, monkeypatch):
    home.write_bytes(b"someone's file")
    monkeypatch.setenv("APPLIANCE_HOME", str(home / "appliance"))
    one_error(appliance("init"), 3, "environment-refused", str(home / "appliance"), "Not a directory")
    assert home.read_bytes() == b"someone's file"


# -- a read-only state dir -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("ask", "hello", "--max-tokens", "1"),
        ("kill-policy", "wipe"),
        ("passphrase", "--new-passphrase-file", "{new}"),
        ("trust", "threshold", "1"),
    ],
)
def test_read_only_state_dir_is_refused_and_unchanged(root_for_mounts, initialised, tmp_path, command):
    (tmp_path / "new").write_text("another passphrase\n")
    before = tree_digest(initialised)
    r = appliance(*(a.format(new=tmp_path / "new") for a in command), prefix=read_only(initialised))
    one_error(r, 3, "environment-refused", f"cannot write {initialised}/", "Read-only file system", "nothing was changed")
    assert tree_digest(initialised) == before


def test_init_under_a_read_only_directory_creates_nothing(root_for_mounts, tmp_path, passphrase_file, monkeypatch):
    parent = tmp_path / "media"
    parent.mkdir()
    monkeypatch.setenv("APPLIANCE_HOME", str(parent / "appliance"))
    r = appliance("init", prefix=read_only(parent))
    one_error(r, 3, "environment-refused", f"cannot write {parent / 'appliance'}", "Read-only file system")
    assert list(parent.iterdir()) == []


# -- a disk that fills up ----------------------------------------------------------------------


def test_init_on_a_full_disk_is_all_or_nothing(home, passphrase_file):
    r = with_file_size_limit("init", fsize=0)
    one_error(r, 3, "environment-refused", f"{home}/vault/vault.json", "File too large")
    assert not home.exists(), "a refused init removes the state dir it made"
    r = appliance("init")
    assert r.returncode == 0, r.stderr
    Vault.unlock(home, PASSPHRASE.encode()).zeroize()
    assert appliance("status").returncode == 0


def test_init_into_an_existing_dir_on_a_full_disk_leaves_it_uninitialised(home, passphrase_file):
    home.mkdir()  # a mount point, say: init must not remove it
    r = with_file_size_limit("init", fsize=0)
    one_error(r, 3, "environment-refused", "vault.json", "File too large")
    assert home.is_dir() and not state.is_initialised(home)
    one_error(appliance("status"), 5, "not-initialised", "appliance init")
    assert appliance("init").returncode == 0
    Vault.unlock(home, PASSPHRASE.encode()).zeroize()


def test_init_interrupted_after_its_vault_is_finished_by_init(home, passphrase_file, monkeypatch):
    """A kill between the vault and the marker: not initialised; `init` keeps that vault and asks nothing."""
    home.mkdir()
    Vault.create(home, PASSPHRASE.encode(), cost=TEST_KDF).zeroize()
    one_error(appliance("status"), 5, "not-initialised", "appliance init")
    monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE")
    r = appliance("init", "--if-needed")
    assert r.returncode == 0 and "vault:   kept" in r.stdout, r.stdout + r.stderr
    assert state.is_initialised(home)
    Vault.unlock(home, PASSPHRASE.encode()).zeroize()


def test_ask_on_a_full_disk_is_refused_and_leaves_no_trace(initialised):
    before = tree_digest(initialised)
    r = with_file_size_limit("ask", "hello", "--max-tokens", "1", fsize=0)
    one_error(r, 3, "environment-refused", "cannot write", "File too large", f"nothing was changed in {initialised}")
    assert tree_digest(initialised) == before  # no pid file or temp, no journal session, no key slot


# -- a prompt that is not text ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        ((os.fsdecode(b"\xff"),), ("PROMPT", "not valid UTF-8", "byte 0xff")),
        (("caf" + os.fsdecode(b"\xe9"),), ("PROMPT", "not valid UTF-8", "byte 0xe9 at character 3")),
        (("hello", "--system", os.fsdecode(b"\xfe")), ("--system", "not valid UTF-8")),
        (("",), ("PROMPT", "empty")),
        ((" \n\t",), ("PROMPT", "empty")),
    ],
)
def test_prompt_that_is_not_text_is_usage_and_journals_nothing(initialised, args, words):
    before = tree_digest(initialised)
    r = appliance("ask", *args, "--max-tokens", "1")
    one_error(r, 2, "usage", *words)
    assert r.stdout == ""
    assert tree_digest(initialised) == before  # no journal session, not even an empty one
