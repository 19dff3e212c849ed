"""The kill-switch on a real generation: `appliance kill` from another process stops it early."""

import os
import subprocess
import sys

import pytest
from helpers import appliance
from vault_setup import PASSPHRASE, install_fake_overlay

from appliance.errors import Erased
from appliance.journal import check, sessions
from appliance.vault import Vault
from appliance.vault.killswitch import pid_path

LONG = ("ask", "Write a very long, detailed story about a lighthouse keeper, chapter by chapter.", "--max-tokens", "2000")


def _start_long_generation():
    proc = subprocess.Popen([sys.executable, "-m", "appliance", *LONG], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    first = proc.stdout.read(1)  # streaming has begun: the generation loop is running
    assert first, proc.stderr.read().decode()
    return proc


def _kill_and_collect(home, *kill_args):
    proc = _start_long_generation()
    r = appliance("kill", *kill_args)
    _out, err = proc.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert proc.returncode == 4, err.decode()  # the documented exit code of a killed command: locked
    assert b"kill-switch" in err
    assert not pid_path(home).exists()
    vault = Vault.unlock(home, PASSPHRASE)
    (sid,) = sessions(vault)
    report = check(vault, sid)
    assert report.ok, report.brk
    return report.records, vault


def test_kill_stops_generation_early_and_journals_it(vault_home):
    records, _ = _kill_and_collect(vault_home)
    user, reply, kill = records
    assert user["role"] == "user" and reply["role"] == "assistant"
    assert reply["finish"] == "cancelled" and reply["tokens"] < 500  # far fewer than the 2000 asked
    assert kill["kind"] == "kill" and kill["wipe"] is False


def _fake_overlay(home):
    vault = Vault.unlock(home, PASSPHRASE)
    path = install_fake_overlay(home, vault, "care", 1, b"weights" * 1000)
    vault.zeroize()
    return path


@pytest.mark.parametrize("how", ["--wipe", "policy"])
def test_kill_wipe_erases_the_overlays(vault_home, how):
    ciphertext = _fake_overlay(vault_home)
    if how == "policy":
        assert "kill policy: wipe" in appliance("kill-policy", "wipe").stdout
    records, vault = _kill_and_collect(vault_home, *([how] if how == "--wipe" else []))
    assert records[-1]["kind"] == "kill" and records[-1]["wipe"] is True
    assert records[-1]["overlays_erased"] == ["overlay/care/1"]
    with pytest.raises(Erased):
        vault.data_key("overlay/care/1")
    assert not ciphertext.exists()


def test_kill_with_nothing_running_is_not_found(vault_home):
    r = appliance("kill")
    assert r.returncode == 5 and "no running appliance" in r.stderr
