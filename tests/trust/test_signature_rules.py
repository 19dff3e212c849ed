"""Signatures over exactly the manifest's bytes, judged at max(now, time floor), by the gpg pinned by path.

Each refusal goes through the real CLI with real keys (`assert_refused`: exit 3, the reason code, the
state tree byte-identical); the rules' own pieces are checked as functions.
"""

import os
import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from bundles import fingerprint, gpg, make_bundle, raw_signature, set_floor, utc
from helpers import appliance, assert_refused, error_line
from test_refusals import signatures_of, with_signatures

from appliance.trust.signatures import (
    CLOCK_TOLERANCE,
    ClockBehindFloor,
    gpg_binary,
    gpg_verify,
    judgement_time,
    scratch_gpg,
)


@pytest.fixture(scope="module")
def good(keys, tmp_path_factory):
    return make_bundle(keys, tmp_path_factory.mktemp("good") / "care-v1.bundle")


def alice_and_bob(keys, good, out, *bob_args):
    """The good bundle with alice's signature and one by bob made with gpg options `bob_args`."""
    sigs, raw = signatures_of(good)
    return with_signatures(good, out, {keys.fpr["alice"]: sigs[keys.fpr["alice"]],
                                       keys.fpr["bob"]: raw_signature(keys, "bob", raw, *bob_args)})  # fmt: skip


# -- signatures over other bytes ------------------------------------------------------


def test_a_text_mode_signature_is_refused(home, keys, good, tmp_path):
    sigs, raw = signatures_of(good)
    text = raw_signature(keys, "bob", raw, "--textmode")
    # Why it matters: gpg holds a text-mode signature good over other bytes too (LF made CRLF).
    with scratch_gpg(gpg(keys.home, "--export", keys.fpr["bob"])) as (g, workdir):
        crlf = raw.replace(b"\n", b"\r\n")
        assert gpg_verify(g, workdir, text, crlf, utc(0)).valid and crlf != raw
    bad = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: sigs[keys.fpr["alice"]], keys.fpr["bob"]: text})
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["bob"], "not a binary signature (class 0x01")


def test_a_sha1_signature_is_refused(home, keys, good, tmp_path):
    bad = alice_and_bob(keys, good, tmp_path / "b.bundle", "--digest-algo", "SHA1")
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["bob"], "weak digest (SHA-1)")


def test_a_sha224_signature_is_refused_by_our_own_check(home, keys, good, tmp_path):
    """gpg accepts SHA-224; the hash algorithm read from VALIDSIG does not."""
    bad = alice_and_bob(keys, good, tmp_path / "b.bundle", "--digest-algo", "SHA224")
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["bob"], "weak digest (SHA-224)")


def test_a_signature_dated_in_the_future_is_refused(home, keys, good, tmp_path):
    ahead = utc(2).strftime("%Y%m%dT%H%M%S")
    bad = alice_and_bob(keys, good, tmp_path / "b.bundle", "--faked-system-time", ahead)
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["bob"], "dated in the future")


def test_a_signature_made_a_little_ahead_counts(home, keys, good, tmp_path):
    """A signer's clock a few minutes fast is within the tolerance."""
    ahead = (utc(0) + CLOCK_TOLERANCE / 4).strftime("%Y%m%dT%H%M%S")
    fine = alice_and_bob(keys, good, tmp_path / "b.bundle", "--faked-system-time", ahead)
    r = appliance("bundle", "verify", str(fine))
    assert r.returncode == 0, r.stderr


# -- expiry against the time floor, and a clock behind it ---------------------------------


def test_judgement_time_is_the_later_of_clock_and_floor_and_refuses_a_clock_far_behind():
    now = utc(0)
    assert judgement_time(now, None) == now
    assert judgement_time(now, now - timedelta(days=3)) == now
    assert judgement_time(now, now + CLOCK_TOLERANCE / 2) == now + CLOCK_TOLERANCE / 2
    with pytest.raises(ClockBehindFloor):
        judgement_time(now, now + CLOCK_TOLERANCE + timedelta(seconds=5))


def test_import_refused_while_the_clock_is_behind_the_floor(home, good):
    set_floor(home, utc(1))
    assert_refused(home, good, "clock-behind-floor", "earlier than the time floor", "set the clock")


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory):
    """A build station holding keys valid for 30 minutes only: a primary signing key (`key`), a signing
    subkey of a long-lived primary (`subkey`), and a long-lived key (`signature`) whose signatures
    expire after 30 minutes (`--default-sig-expire`)."""
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    home.chmod(0o700)
    gpg(home, "--quick-gen-key", "key <key@example>", "ed25519", "sign", "seconds=1800")
    gpg(home, "--quick-gen-key", "subkey <subkey@example>", "ed25519", "cert", "2y")
    gpg(home, "--quick-add-key", fingerprint(home, "subkey@example"), "ed25519", "sign", "seconds=1800")
    gpg(home, "--quick-gen-key", "signature <signature@example>", "ed25519", "sign", "2y")
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("which", ["key", "subkey", "signature"])
def test_expiry_is_judged_against_the_floor(home, keys, good, short_lived, tmp_path, which):
    """Valid by the clock, expired by the floor (45 minutes ahead, within the tolerance): it does not count."""
    fpr = fingerprint(short_lived, f"{which}@example")
    key = tmp_path / "key.asc"
    key.write_bytes(gpg(short_lived, "--export", "--armor", fpr))
    assert appliance("trust", "add", str(key), "--fingerprint", fpr).returncode == 0
    sigs, raw = signatures_of(good)
    extra = ["--default-sig-expire", "seconds=1800"] if which == "signature" else []
    theirs = gpg(short_lived, *extra, "--local-user", fpr, "--detach-sign", "--armor", input=raw)
    bundle = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: sigs[keys.fpr["alice"]], fpr: theirs})
    assert appliance("bundle", "verify", str(bundle)).returncode == 0  # by the clock alone, it counts
    set_floor(home, utc(0) + timedelta(minutes=45))
    assert_refused(home, bundle, "threshold-not-met", "1 of 2", fpr, "expired")


# -- which gpg, and what is read from it ------------------------------------------------------


def test_gpg_is_run_by_absolute_path_never_through_path(home, good, tmp_path):
    planted = tmp_path / "bin"
    planted.mkdir()
    marker = tmp_path / "ran"
    for name in ("gpg", "gpgconf"):
        (planted / name).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        (planted / name).chmod(0o755)
    r = appliance("bundle", "verify", str(good), env={"PATH": f"{planted}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert gpg_binary().is_absolute() and gpg_binary().parent != planted


def test_gpg_status_lines_are_read_apart_from_its_log(keys, good):
    sigs, raw = signatures_of(good)
    with scratch_gpg(gpg(keys.home, "--export", keys.fpr["alice"])) as (g, workdir):
        result = gpg_verify(g, workdir, sigs[keys.fpr["alice"]], raw, utc(0))
        log = (workdir / "gpg.log").read_text()
    assert result.valid
    assert result.stderr.strip() and all(line.startswith("[GNUPG:] ") for line in result.stderr.splitlines())
    assert "Good signature" in log  # gpg's own words went to its log file


def test_bundle_sign_refuses_to_make_a_signature_that_would_not_count(keys, tmp_path):
    """A signer whose gpg.conf asks for text mode learns it when signing, not at the import."""
    bundle = make_bundle(keys, tmp_path / "c.bundle", signers=())
    signer = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))  # a copy of the build station's home (short: agent socket)
    try:
        shutil.copytree(keys.home, signer, dirs_exist_ok=True, ignore=shutil.ignore_patterns("S.*"))
        (signer / "gpg.conf").write_text("textmode\n")
        r = appliance("bundle", "sign", str(bundle), "--key", keys.fpr["alice"], "--gnupghome", str(signer))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(signer), "--kill", "all"], capture_output=True)
        shutil.rmtree(signer, ignore_errors=True)
    assert "not a binary signature" in error_line(r, 3, "signing-failed")
