"""Trust-chain text from outside reaches the terminal escaped: key user ids, bundle file names, stored signers.

The manifest's `name` cannot carry a control character (the schema's pattern refuses it); these can.
"""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from bundles import fingerprint, gpg, make_bundle
from helpers import appliance, error_line, ok

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
TITLE = "\x1b]0;pwned\x07\x1b[2J"
TITLE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"


def _escaped(r, stream: str) -> str:
    text = r.stdout + r.stderr
    assert not RAW.search(text), repr(RAW.search(text).group())
    return getattr(r, stream)


@pytest.fixture
def evil_uid_key(tmp_path):
    """A public key whose user id carries OSC and CSI sequences (gpg accepts it; python-gnupg unescapes it)."""
    scratch = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    scratch.chmod(0o700)
    try:
        gpg(scratch, "--quick-gen-key", f"mallory {TITLE}\r <m@example>", "ed25519", "sign", "1y")
        fpr = fingerprint(scratch, "m@example")
        (tmp_path / "mallory.asc").write_bytes(gpg(scratch, "--export", "--armor", fpr))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(scratch), "--kill", "all"], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return tmp_path / "mallory.asc", fpr


def test_trust_list_escapes_a_key_user_id(home, evil_uid_key):
    key, fpr = evil_uid_key
    ok("trust", "add", str(key), "--fingerprint", fpr)
    r = appliance("trust", "list")
    assert r.returncode == 0, r.stderr
    assert f"{fpr}  mallory {TITLE_SHOWN}\\x0d <m@example>" in _escaped(r, "stdout")


@pytest.mark.parametrize("command", [("bundle", "verify"), ("update", "import")])
def test_a_bundle_file_name_is_escaped_in_the_refusal(home, tmp_path, command):
    bundle = tmp_path / f"care{TITLE}.bundle"
    bundle.write_bytes(b"not a tar archive" * 100)
    r = appliance(*command, str(bundle))
    error_line(r, 3, "bundle-unreadable")
    assert f"care{TITLE_SHOWN}.bundle" in _escaped(r, "stderr")

    r = appliance(*command, str(tmp_path / f"gone{TITLE}.bundle"))
    error_line(r, 5, "not-found")
    assert f"gone{TITLE_SHOWN}.bundle" in _escaped(r, "stderr")


def test_status_never_prints_a_stored_signer_raw(home, keys, tmp_path):
    """accepted.json names the signers that `status` shows: an edited one is shown escaped, or refused."""
    ok("update", "import", str(make_bundle(keys, tmp_path / "care.bundle")))
    (accepted,) = (home / "store" / "objects").glob("*/accepted.json")
    doc = json.loads(accepted.read_text())
    accepted.write_text(json.dumps({**doc, "signers": [TITLE]}, ensure_ascii=False))
    r = appliance("status")
    _escaped(r, "stdout")
    assert (r.returncode, TITLE_SHOWN in r.stdout) in [(0, True), (3, False)], (r.returncode, r.stdout, r.stderr)
