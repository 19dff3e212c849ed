"""Demo signers admit only the demo items, and never share a policy with production trust (`trust.policy`
rules 6 and 7).

`init --demo` destroys its keys, so these tests pin alice and bob exactly as it pins its own: demo
keys scoped to the demo items (`test_demo.py` checks that `init --demo` writes that scope).
"""

import pytest
from bundles import make_bundle, make_control_bundle, make_not_a_model_bundle
from helpers import PASSPHRASE, appliance, assert_refused, error_line, make_vault_home, ok, tree_digest

from appliance.demo.install import DEMO_ITEMS, DEMO_NAME
from appliance.store.layout import Store
from appliance.store.trust_changes import pin_signer
from appliance.trust.policy import ProductionSignersPinned, item_id
from appliance.vault import Vault

DEMO_SCOPE = [item_id(item.kind, item.name) for item in DEMO_ITEMS]


@pytest.fixture
def demo_home(keys, tmp_path, monkeypatch):
    """A fresh appliance with alice and bob pinned as demo signers, scoped to the demo items."""
    home, passphrase = tmp_path / "home", tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE)
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(passphrase))
    make_vault_home(home)
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        for name in ("alice", "bob"):
            pin_signer(vault, keys.public(name, tmp_path).read_bytes(), keys.fpr[name], scope=DEMO_SCOPE)
    return home


def test_demo_signers_admit_their_demo_item(demo_home, keys, tmp_path):
    demo = make_bundle(keys, tmp_path / "demo.bundle", name=DEMO_NAME)
    assert "verified overlay field-manual-demo v1" in ok("bundle", "verify", str(demo))


def test_demo_signers_cannot_sign_another_name(demo_home, keys, tmp_path):
    other = make_bundle(keys, tmp_path / "care.bundle", name="care")
    assert_refused(
        demo_home,
        other,
        "threshold-not-met",
        "0 of 2",
        "counts only for control-vector/radio-operator, overlay/field-manual-demo",
    )


def test_demo_signers_cannot_sign_another_kind_under_a_demo_name(demo_home, keys, tmp_path):
    control = make_control_bundle(keys, tmp_path / "control.bundle", name=DEMO_NAME)
    assert_refused(demo_home, control, "threshold-not-met", "0 of 2", "counts only for")
    base = make_not_a_model_bundle(keys, tmp_path / "base.bundle", name="radio-operator", version=1)
    assert_refused(demo_home, base, "threshold-not-met", "0 of 2", "counts only for")


def test_a_demo_signer_pinned_before_scopes_counts_for_nothing(demo_home, keys, tmp_path):
    with Vault.unlock(demo_home, PASSPHRASE.encode()) as vault:
        trust = Store.unlocked(vault).trust()
        policy = trust.policy()
        trust._save(type(policy)(policy.signers, policy.threshold, policy.demo))  # as `init --demo` wrote it before
    demo = make_bundle(keys, tmp_path / "demo.bundle", name=DEMO_NAME)
    assert_refused(demo_home, demo, "threshold-not-met", "0 of 2", "counts only for nothing")


def test_no_production_change_while_demo_signers_are_pinned(demo_home, keys, tmp_path):
    before = tree_digest(demo_home)
    carol = keys.public("carol", tmp_path)
    line = error_line(appliance("trust", "add", str(carol), "--fingerprint", keys.fpr["carol"]), 3, "demo-signers-pinned")
    assert "trust remove-demo" in line
    error_line(appliance("trust", "threshold", "1"), 3, "demo-signers-pinned")
    assert tree_digest(demo_home) == before

    listed = ok("trust", "list")
    assert "demo signers pinned" in listed and listed.count("[DEMO KEY]; counts only for control-vector/radio-operator") == 2
    removed = ok("trust", "remove-demo")
    assert sorted(removed.splitlines()) == sorted(f"removed demo signer {keys.fpr[n]}" for n in ("alice", "bob"))
    assert "demo signers pinned" not in ok("trust", "list")
    ok("trust", "add", str(carol), "--fingerprint", keys.fpr["carol"])
    ok("trust", "threshold", "1")
    error_line(appliance("trust", "remove-demo"), 5, "not-found")


def test_no_demo_signer_joins_production_signers(home, keys, tmp_path):
    """`home`: alice, bob, old and rev pinned as production signers."""
    before = tree_digest(home)
    with Vault.unlock(home, PASSPHRASE.encode()) as vault, pytest.raises(ProductionSignersPinned):
        pin_signer(vault, keys.public("carol", tmp_path).read_bytes(), keys.fpr["carol"], scope=DEMO_SCOPE)
    said = ok("init", "--demo")  # what `./run chat` runs on every start: a production appliance goes on
    assert "demo:    not installed: production signers are pinned" in said
    assert tree_digest(home) == before


def test_status_says_demo_signers_pinned(demo_home):
    assert "demo signers pinned" in ok("status")
    ok("trust", "remove-demo")
    assert "demo signers pinned" not in ok("status")
