"""The journal: every kind of tampering located by `appliance logs verify` (exit 3), failed writes, latency."""

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import appliance, error_line

from appliance.journal import Journal, frames, verify_session
from appliance.journal.session_files import relative_path


def _session(vault, n=5, tag="a"):
    j = Journal.create(vault)
    for i in range(1, n + 1):
        j.append("message", role="user" if i % 2 else "assistant", text=f"{tag} message {i}")
    j.close()
    return j.session_id


def _frames(vault_home, sid):
    path = vault_home / relative_path(sid)
    found, tail = frames.split(path.read_bytes())
    assert tail is None
    return path, [f.raw for f in found]


def _verify_fails(sid, record, kind):
    r = appliance("logs", "verify", sid)
    assert f"record {record}: {kind}:" in error_line(r, 3, "journal-broken")
    assert f"record {record}: {kind}:" in r.stdout


def test_intact_session_verifies(vault_home, vault):
    sid = _session(vault)
    r = appliance("logs", "verify", sid)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "5 records" in r.stdout
    assert [rec["text"] for rec in verify_session(vault, sid).records] == [f"a message {i}" for i in range(1, 6)]


def test_one_byte_modified(vault_home, vault):
    sid = _session(vault)
    path, raw = _frames(vault_home, sid)
    data = bytearray(path.read_bytes())
    data[len(raw[0]) + len(raw[1]) + len(raw[2]) - 5] ^= 0x01  # inside record 3's ciphertext
    path.write_bytes(data)
    _verify_fails(sid, 3, "modified")


def test_record_deleted(vault_home, vault):
    sid = _session(vault)
    path, raw = _frames(vault_home, sid)
    path.write_bytes(b"".join(raw[:1] + raw[2:]))
    _verify_fails(sid, 2, "deleted")


def test_two_records_swapped(vault_home, vault):
    sid = _session(vault)
    path, raw = _frames(vault_home, sid)
    path.write_bytes(b"".join([raw[0], raw[2], raw[1], raw[3], raw[4]]))
    _verify_fails(sid, 2, "reordered")


@pytest.mark.parametrize("cut", ["whole records", "mid-record"])
def test_tail_cut_off(vault_home, vault, cut):
    sid = _session(vault)
    path, raw = _frames(vault_home, sid)
    if cut == "whole records":
        path.write_bytes(b"".join(raw[:3]))  # a clean chain: only the sealed head knows
    else:
        path.write_bytes(b"".join(raw[:3]) + raw[3][:20])
    _verify_fails(sid, 4, "truncated")


def test_record_copied_from_another_session(vault_home, vault):
    sid, other = _session(vault, tag="a"), _session(vault, tag="b")
    path, raw = _frames(vault_home, sid)
    _, other_raw = _frames(vault_home, other)
    path.write_bytes(b"".join(raw[:2] + [other_raw[2]] + raw[3:]))
    _verify_fails(sid, 3, "foreign")


def test_whole_session_file_replaced(vault_home, vault):
    sid, other = _session(vault, tag="a"), _session(vault, n=5, tag="b")
    (vault_home / relative_path(sid)).write_bytes((vault_home / relative_path(other)).read_bytes())
    _verify_fails(sid, 1, "replaced")
    r = appliance("logs", "verify")  # all sessions: the untouched one still passes, exit 3 overall
    assert sid in error_line(r, 3, "journal-broken") and f"ok      {other}" in r.stdout


def test_session_file_deleted(vault_home, vault):
    sid = _session(vault)
    (vault_home / relative_path(sid)).unlink()
    _verify_fails(sid, 1, "deleted")


def test_show_and_export(vault_home, vault, tmp_path):
    sid = _session(vault, n=2)
    r = appliance("logs", "show", sid)
    assert r.returncode == 0 and "a message 2" in r.stdout
    out = tmp_path / "export.jsonl"
    assert appliance("logs", "export", sid, "--format", "jsonl", "--out", str(out)).returncode == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["a message 1", "a message 2"]
    md = tmp_path / "export.md"
    assert appliance("logs", "export", sid, "--format", "md", "--out", str(md)).returncode == 0
    assert "a message 1" in md.read_text()
    assert "a message 1" in appliance("logs", "list").stdout


_FAILING_WRITER = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from appliance.journal import Journal, JournalWriteFailed
    from appliance.vault import Vault

    home = Path(sys.argv[1])
    vault = Vault.unlock(home, sys.argv[2].encode())
    j = Journal.create(vault)
    for i in range(3):
        j.append("message", role="user", text=f"kept {i}")
    size = (home / "journal" / f"{j.session_id}.journal").stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
    print(j.session_id)
    try:
        j.append("message", role="assistant", text="x" * 5000)
    except JournalWriteFailed as e:
        print(e)
        sys.exit(e.exit_code)
    """
)


def test_failed_write_leaves_earlier_records_verifiable(vault_home):
    from helpers import PASSPHRASE

    r = subprocess.run([sys.executable, "-c", _FAILING_WRITER, str(vault_home), PASSPHRASE], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    sid, message = r.stdout.splitlines()[:2]
    assert "File too large" in message and "records 1..3 are intact" in message
    v = appliance("logs", "verify", sid)
    assert v.returncode == 0 and "3 records" in v.stdout, v.stdout + v.stderr
    assert "kept 2" in appliance("logs", "show", sid).stdout


def test_failed_write_in_ask_is_a_clear_error(vault_home, vault):
    import resource

    earlier = _session(vault, n=3)
    limit = 8 << 10  # above the key-slot table, below the 12 kB prompt record (which fits the context window)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(
        [sys.executable, "-m", "appliance", "ask", "x" * 12_000, "--max-tokens", "1"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert "File too large" in error_line(r, 3, "journal-write-failed")
    assert appliance("logs", "verify").returncode == 0
    assert appliance("logs", "verify", earlier).returncode == 0
