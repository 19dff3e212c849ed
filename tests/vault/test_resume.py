"""Resuming a past session (`ask --resume`, journal/resume.py, service.UnlockedAppliance.resume): the history
rebuilt with its system prompt, a new session linked to the old one's sealed head, refusals that change nothing."""

import time

import pytest
from helpers import PASSPHRASE, appliance, error_line, ok, refused, tree_digest

from appliance.journal import Journal, read_session, sessions
from appliance.journal.resume import ResumeChainBroken, past_conversation
from appliance.journal.session_files import relative_path, session_key_id
from appliance.runtime.sampler import SamplingSettings
from appliance.runtime.session import Session
from appliance.vault import Vault

ASKED = SamplingSettings(temperature=0.0, seed=0)  # what `ask --temperature 0` samples with


def _vault(home) -> Vault:
    return Vault.unlock(home, PASSPHRASE.encode())


def test_ask_resume_continues_the_history_in_a_new_linked_session(vault_home, runtime):
    ok("ask", "My name is Ada. Say hello.", "--system", "You are a pirate.", "--temperature", "0", "--max-tokens", "12")
    with _vault(vault_home) as vault:
        (old,) = sessions(vault)
        old_records = read_session(vault, old)
        head = vault.head(session_key_id(old))
    old_bytes = (vault_home / relative_path(old)).read_bytes()
    r = appliance("ask", "What is my name?", "--resume", old, "--temperature", "0", "--max-tokens", "16")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr  # same base, no overlay then or now: nothing to say
    with _vault(vault_home) as vault:
        (new,) = [s for s in sessions(vault) if s != old]
        records = read_session(vault, new)
    assert (vault_home / relative_path(old)).read_bytes() == old_bytes  # the old session is never written to
    link, user, assistant = records
    assert link["kind"] == "resume" and link["notices"] == [] and link["messages"] == 2
    assert (link["from_session"], link["from_head_seq"], link["from_head_hash"]) == (old, *head) and head[0] == 2
    assert user["system_prompt"] == assistant["system_prompt"] == "You are a pirate."  # the prompt that conditioned it
    # The reply is what the model says with the old exchange in its history.
    history = [{"role": r["role"], "content": r["text"]} for r in old_records]
    runtime.decoder.reset()
    fresh = Session(runtime, system_prompt="You are a pirate.", settings=ASKED, history=history)
    assert assistant["text"] == fresh.generate("What is my name?", max_tokens=16).text


def _session(vault, *records: dict) -> str:
    journal = Journal.create(vault)
    for r in records:
        journal.append(**r)
    journal.close()
    return journal.session_id


def _msg(role, text, **extra):
    return {"kind": "message", "role": role, "text": text, **extra}


def test_the_history_follows_regenerate_edit_failed_replies_and_chained_resumes(vault):
    first = _session(
        vault,
        _msg("user", "a", system_prompt="S", preset="p"),
        _msg("assistant", "A"),
        _msg("user", "b"),
        _msg("assistant", "B1"),
        {"kind": "regenerate", "replaced": "B1", "prompt": "b"},
        _msg("user", "b"),
        _msg("assistant", "B2"),
        _msg("user", "c"),
        _msg("assistant", "C"),
        {"kind": "edit", "replaced": "c", "replaced_reply": "C"},
        _msg("user", "c2"),
        _msg("user", "d"),  # c2's reply failed: only the prompt was journalled
        _msg("assistant", "D", system_prompt="S2", preset=None),
        {"kind": "overlay-toggle", "on": False},
        _msg("user", "e"),  # the last prompt got no reply
    )
    past = past_conversation(vault, first)
    assert [m["content"] for m in past.history] == ["a", "A", "b", "B2", "d", "D"]
    assert past.system_prompt == "S2" and past.preset is None  # the last message's conditioning
    assert past.link.session_id == first and (past.link.head_seq, past.link.head_hash) == vault.head(session_key_id(first))
    second = _session(vault, {"kind": "resume", **past.link.record()}, _msg("user", "f"), _msg("assistant", "F"))
    assert [m["content"] for m in past_conversation(vault, second).history] == ["a", "A", "b", "B2", "d", "D", "f", "F"]
    # A link whose head no longer matches (the old session was changed or replaced) is refused.
    stale = _session(vault, {"kind": "resume", **past.link.record(), "from_head_seq": 3})
    with pytest.raises(ResumeChainBroken):
        past_conversation(vault, stale)


def _refused(home, code, reason, *args):
    return refused(home, code, reason, "ask", "Hello?", "--max-tokens", "2", *args)


def test_refusals_change_nothing(vault_home):
    with _vault(vault_home) as vault:
        good = _session(vault, _msg("user", "hi"), _msg("assistant", "hello"))
        broken = _session(vault, _msg("user", "hi"), _msg("assistant", "hello"))
        gone = _session(vault, _msg("user", "hi"), _msg("assistant", "hello"))
    path = vault_home / relative_path(broken)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with _vault(vault_home) as vault:
        vault.erase([session_key_id(gone)])
    while any((vault_home / ".erased").iterdir()):  # the erase unlinks its ciphertext in a detached process
        time.sleep(0.05)
    _refused(vault_home, 2, "usage", "--resume", "../../etc/passwd")
    _refused(vault_home, 2, "usage", "--resume", good, "--system", "another")
    before = tree_digest(vault_home)
    error_line(appliance("chat", "--resume", good, "--system", "another"), 2, "usage")
    error_line(appliance("chat", "--resume", "not-an-id"), 2, "usage")
    assert tree_digest(vault_home) == before
    _refused(vault_home, 5, "not-found", "--resume", "20250101T000000Z-00000000")
    _refused(vault_home, 3, "journal-broken", "--resume", broken)
    _refused(vault_home, 6, "erased", "--resume", gone)


def test_resume_says_what_is_no_longer_active_and_records_what_is(vault_home):
    other_base = {"name": "old-base", "sha256": "cd" * 32, "version": 3}
    overlay = {"name": "care", "version": 2, "sha256": "ef" * 32, "signers": [], "demo_signers": [], "on": True}
    with _vault(vault_home) as vault:
        old = _session(
            vault,
            _msg("user", "hi", base=other_base, overlay=overlay, system_prompt="Be brief.", preset="brief"),
            _msg("assistant", "hello", base=other_base, overlay=overlay, system_prompt="Be brief.", preset="brief"),
        )
    r = appliance("ask", "Again?", "--resume", old, "--temperature", "0", "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3, r.stderr
    assert "base old-base v3" in notes[0] and "continuing on smollm2-135m-instruct-q4_1" in notes[0]
    assert "overlay care v2, not loaded now: continuing without it" in notes[1]
    assert "preset 'brief' was removed or changed" in notes[2]
    with _vault(vault_home) as vault:
        (new,) = [s for s in sessions(vault) if s != old]
        link, _, assistant = read_session(vault, new)
    assert link["notices"] == [n.removeprefix("note: ") for n in notes]
    # What really produced the new reply: the active base, no overlay, the recorded system prompt, no preset.
    assert assistant["base"]["sha256"] != other_base["sha256"] and assistant["overlay"] is None
    assert assistant["system_prompt"] == "Be brief." and assistant["preset"] is None
