"""The state around verification, attacked by someone with the user's shell but not the passphrase.

The trust policy, the signers' keyring, the store's state and each version's accepted record are
sealed under the vault (`appliance/state_files.py`, `appliance/vault/sealed_state.py`): changing them
needs the passphrase; edited, replaced by an older copy, planted or deleted outside the appliance
they refuse with exit 3 naming the file (`[state-forged]`; a sealed file whose content is invalid:
`[state-file-damaged]`), and nothing else changes. Each test runs also under
`python -O`, where an `assert` would have vanished.
"""

import json
import shutil

import pytest
from bundles import make_bundle
from helpers import PASSPHRASE, appliance, error_line, ok, refused, tree_digest

from appliance.state_files import state_bytes
from appliance.vault import Vault
from appliance.vault.sealed_state import SealedState

OPTIMISE = [{}, {"PYTHONOPTIMIZE": "1"}]


def carol_only(keys, tmp_path, name="evil"):
    return make_bundle(keys, tmp_path / f"{name}.bundle", name=name, signers=("carol",))


def test_the_whole_attack_on_the_policy_fails(home, keys, tmp_path, monkeypatch):
    """Without the passphrase: pin your own key, lower the threshold, import what you alone signed."""
    monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE")
    before = tree_digest(home)
    carol = keys.public("carol", tmp_path)
    error_line(appliance("trust", "add", str(carol), "--fingerprint", keys.fpr["carol"], input=""), 4, "no-passphrase")
    error_line(appliance("trust", "threshold", "1", input=""), 4, "no-passphrase")
    assert tree_digest(home) == before

    # So the attacker writes the files by hand: the policy with their key and a threshold of 1.
    policy = home / "trust" / "policy.json"
    doc = json.loads(policy.read_text())
    policy.write_text(json.dumps({**doc, "threshold": 1, "signers": doc["signers"] + [keys.fpr["carol"]]}))
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(home.parent / "pp"))
    (home.parent / "pp").write_text(PASSPHRASE)
    for env in OPTIMISE:
        refused(
            home, 3, "state-forged", "update", "import", str(carol_only(keys, tmp_path)), words=["trust/policy.json"], env=env
        )
        refused(home, 3, "state-forged", "trust", "list", words=["trust/policy.json"], env=env)
        refused(home, 3, "state-forged", "status", words=["trust/policy.json"], env=env)


def test_trust_changes_are_journalled(home, keys, tmp_path):
    ok("trust", "threshold", "1")
    ok("trust", "remove", keys.fpr["old"])
    out = tmp_path / "trust.jsonl"
    sessions = [line.split()[0] for line in ok("logs", "list").splitlines()]
    changes = []
    for sid in sessions:
        ok("logs", "export", sid, "--format", "jsonl", "--out", str(out))
        changes += [json.loads(line) for line in out.read_text().splitlines()]
    threshold = next(c for c in changes if c.get("action") == "threshold")
    assert threshold["kind"] == "trust-change" and (threshold["threshold_before"], threshold["threshold_after"]) == (2, 1)
    unpin = next(c for c in changes if c.get("action") == "unpin")
    assert unpin["fingerprint"] == keys.fpr["old"] and keys.fpr["old"] not in unpin["signers_after"]
    assert keys.fpr["old"] not in ok("trust", "list")


@pytest.mark.parametrize("env", OPTIMISE, ids=["plain", "python-O"])
def test_forged_accepted_record_is_refused(home, keys, tmp_path, env):
    """Naming a signer that never signed (or dropping the demo mark) in accepted.json."""
    ok("update", "import", str(make_bundle(keys, tmp_path / "care.bundle")))
    (record,) = (home / "store" / "objects").glob("*/accepted.json")
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "signers": [keys.fpr["carol"]]}))
    refused(home, 3, "state-forged", "status", words=["accepted.json"], env=env)
    refused(home, 3, "state-forged", "ask", "hi", "--overlay", "on", "--max-tokens", "1", words=["accepted.json"], env=env)


def test_older_store_state_put_back_is_refused(home, keys, tmp_path):
    """Undoing an erase (or lowering the time floor, or a version) by restoring an older state.json."""
    ok("update", "import", str(make_bundle(keys, tmp_path / "care.bundle")))
    state = home / "store" / "state.json"
    saved = state.read_bytes()
    ok("erase", "overlay", "care", "--yes")
    state.write_bytes(saved)
    for env in OPTIMISE:
        refused(home, 3, "state-forged", "update", "list", words=["store/state.json", "older copy"], env=env)


def test_older_keyring_put_back_is_refused(home, keys, tmp_path):
    """A keyring from before a key was revoked (or unpinned) must not come back."""
    keyring = home / "trust" / "gnupg" / "pubring.kbx"
    saved = keyring.read_bytes()
    ok("trust", "remove", keys.fpr["bob"])
    keyring.write_bytes(saved)
    refused(home, 3, "state-forged", "update", "import", str(make_bundle(keys, tmp_path / "care.bundle")), words=["pubring.kbx"])


def test_deleted_or_planted_state_is_refused(home, keys, tmp_path):
    policy = home / "trust" / "policy.json"
    saved = policy.read_bytes()
    policy.unlink()
    refused(home, 3, "state-forged", "trust", "list", words=["trust/policy.json", "deleted"])
    policy.write_bytes(saved)
    assert "threshold: 2" in ok("trust", "list")

    fresh = tmp_path / "fresh"
    shutil.copytree(home, fresh)
    shutil.rmtree(fresh / "store", ignore_errors=True)
    ok("update", "list", env={"APPLIANCE_HOME": str(fresh)})
    (fresh / "store").mkdir()
    (fresh / "store" / "state.json").write_bytes((home / "trust" / "policy.json").read_bytes())
    words = ["store/state.json", "not written by this appliance"]
    refused(fresh, 3, "state-forged", "update", "list", words=words, env={"APPLIANCE_HOME": str(fresh)})


@pytest.mark.parametrize("env", OPTIMISE, ids=["plain", "python-O"])
@pytest.mark.parametrize(
    "change, field",
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": "1"}, "threshold"),
        ({"signers": "ABC"}, "signers"),
        ({"signers": ["not a fingerprint"]}, "signers"),
        ({"demo": ["F" * 40]}, "demo"),
        ({"format": "appliance-policy/0"}, "appliance-policy/1"),
    ],
)
def test_invalid_sealed_policy_is_refused_by_code_not_assert(home, keys, tmp_path, change, field, env):
    """Even a policy the vault sealed (a bug, or an old format) is checked field by field."""
    policy = home / "trust" / "policy.json"
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        SealedState(vault).write(policy, state_bytes({**json.loads(policy.read_text()), **change}))
    finally:
        vault.zeroize()
    line = refused(
        home,
        3,
        "state-file-damaged",
        "update",
        "import",
        str(carol_only(keys, tmp_path)),
        words=["trust/policy.json", field],
        env=env,
    )
    assert "signatures" not in line  # refused at the policy, before any signature was counted
