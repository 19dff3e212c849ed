"""`appliance logs search TEXT`: every session searched in memory, matches shown escaped, nothing written in plaintext."""

import pytest
from helpers import appliance, error_line

from appliance.journal import Journal
from appliance.journal.search import Match, Skipped, search
from appliance.journal.session_files import relative_path

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

WORD = "Quetzalcoatlus"


def _session(vault, *texts, kind="message"):
    j = Journal.create(vault)
    for i, text in enumerate(texts):
        j.append(kind, role="user" if i % 2 == 0 else "assistant", text=text)
    j.close()
    return j.session_id


def _files(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_search_finds_a_word_and_writes_no_plaintext(vault_home, vault):
    other = _session(vault, "nothing to see", "still nothing")
    sid = _session(vault, "What is the largest pterosaur?", f"Probably {WORD} northropi, with a wingspan near 11 m.")
    needles = [WORD.encode(), WORD.lower().encode(), WORD.encode("utf-16-le")]
    before = _files(vault_home)
    assert not [p for p, data in before.items() if any(n in data for n in needles)]  # encrypted at rest, to start with

    r = appliance("logs", "search", WORD.upper())  # any case

    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line for line in lines if line.startswith(sid)] == [
        f"{sid}  [2] {_time(vault, sid, 2)} assistant (no overlay): Probably {WORD} northropi, with a wingspan ne..."
    ]
    assert other not in r.stdout
    assert lines[-1] == "1 matches in 1 of 2 sessions"
    after = _files(vault_home)
    leaked = [p for p, data in after.items() if any(n in data for n in needles)]
    assert leaked == [], f"plaintext of the search under the state dir: {leaked}"
    assert set(after) == set(before), "search left new files behind"


def _time(vault, sid, n):
    from appliance.journal import read_session

    return read_session(vault, sid)[n - 1]["time"]


def test_search_output_is_escaped(vault_home, vault):
    _session(vault, f"{WORD} \x1b]52;c;cHduZWQ=\x07 and \u202e")
    r = appliance("logs", "search", WORD)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert "\\x1b]52;c;cHduZWQ=\\x07" in r.stdout and "\\u202e" in r.stdout


def test_empty_search_is_a_usage_error(vault_home):
    error_line(appliance("logs", "search", "  "), 2, "usage")


def test_broken_session_is_reported_and_its_intact_records_searched(vault_home, vault):
    sid = _session(vault, f"first {WORD}", "second", f"third {WORD}")
    path = vault_home / relative_path(sid)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # the last record no longer authenticates
    path.write_bytes(bytes(data))
    hits = list(search(vault, WORD.lower()))
    assert [(type(h), h.record if isinstance(h, Match) else None) for h in hits] == [(Match, 1), (Skipped, None)]
    assert "broken at record 3" in hits[1].reason
