"""Fuzzing the parsers that read attacker-controlled bytes: only typed refusals, never a crash."""

import json

from helpers import PASSPHRASE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.journal import Journal, frames, verify_session
from appliance.journal.session_files import relative_path
from appliance.vault import KeySlotsCorrupt, Vault
from appliance.vault.aead import random_key, seal
from appliance.vault.vault_file import MASTER_AD, TABLE_AD, vault_path

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=2048))
def test_frame_split_never_raises(data):
    found, broken_at = frames.split(data)
    assert broken_at is None or broken_at.record == len(found) + 1
    walked = b"".join(f.raw for f in found)  # the frames tile the start of the file, in order
    assert data.startswith(walked) and (broken_at is not None or walked == data)  # clean end: every byte is in a frame


@FUZZ
@given(data=st.data())
def test_journal_reader_only_reports_breaks(vault, data):
    j = Journal.create(vault)
    for i in range(3):
        j.append("message", role="user", text=f"m{i}")
    j.close()
    path = vault.home / relative_path(j.session_id)
    original = path.read_bytes()
    choice = data.draw(st.sampled_from(["random", "mutate", "cut"]))
    if choice == "random":
        path.write_bytes(data.draw(st.binary(max_size=1024)))
    elif choice == "mutate":
        edits = data.draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
        path.write_bytes(_mutate(original, edits))
    else:
        path.write_bytes(original[: data.draw(st.integers(0, len(original)))])
    try:
        report = verify_session(vault, j.session_id)
    except ApplianceError:
        return
    assert report.ok == (path.read_bytes() == original)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda d: json.dumps(d).encode(),
            st.dictionaries(
                st.text(max_size=8),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=8,
                ),
                max_size=5,
            ),
        ),
    )
)
def test_key_slot_parser_only_typed_errors(vault, blob):
    """Any table, authentic (sealed under a master key the KEK wraps, as a bug could write it): a typed refusal."""
    path = vault_path(vault.home)
    original = path.read_bytes()
    master = random_key()
    path.write_text(
        json.dumps({**json.loads(original), "master": seal(vault._kek, master, MASTER_AD), "table": seal(master, blob, TABLE_AD)})
    )
    try:
        vault.key_ids()
    except KeySlotsCorrupt:
        pass
    finally:
        path.write_bytes(original)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
def test_vault_file_parser_only_typed_errors(vault_home, edits):
    path = vault_path(vault_home)
    original = path.read_bytes()
    mutated = _mutate(original, edits)
    path.write_bytes(mutated)
    try:
        Vault.unlock(vault_home, PASSPHRASE.encode()).zeroize()
    except ApplianceError as e:
        assert e.exit_code in (4, 6)
    else:
        # Only a no-op edit, or one in a place unlock does not read (the "created" date, its name), may still open.
        read = ("format", "kdf", "master", "table")
        assert {k: json.loads(mutated).get(k) for k in read} == {k: json.loads(original)[k] for k in read}
    finally:
        path.write_bytes(original)
