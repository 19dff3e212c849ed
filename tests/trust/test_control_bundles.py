"""Bundles of kind `control-vector` through the whole trust chain, with the real CLI, real gpg keys and real AES-GCM:
import, encryption at rest, list/status/verify, rollback, crypto-erase, the kill's wipe, and every refusal
(exit code, one-line reason, state tree byte-identical), with the installed overlay and vector still working after it."""

import os

import numpy as np
import pytest
from bundles import BASE_SHA, control_dir, iso, make_bundle, make_control_bundle, utc
from helpers import PASSPHRASE, appliance, assert_refused, error_line, ok, tree_digest

from appliance.journal import read_session, sessions
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay
from appliance.runtime.sampler import SamplingSettings
from appliance.runtime.session import Runtime
from appliance.service import UnlockedAppliance
from appliance.store import ActiveBase, load_active
from appliance.store.importer import import_bundle
from appliance.store.layout import Store
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.trust.bundle import create_bundle
from appliance.trust.manifest import ManifestOverlayIncomplete
from appliance.vault import Vault
from appliance.vault.killswitch import WIPE_SIGNAL, Killed


@pytest.fixture(scope="module")
def base():
    return ActiveBase(verify_pinned(embedded_pin()), hidden_size=576, n_layer=30)


@pytest.fixture
def installed(home, keys, base, vault, tmp_path):
    """An overlay `care` v1 and a control vector `terse` v1, both installed and active."""
    import_bundle(make_bundle(keys, tmp_path / "care.bundle"), base, vault)
    import_bundle(make_control_bundle(keys, tmp_path / "terse.bundle"), base, vault)
    return home


def assert_both_work(base, vault):
    """Nothing lost: the overlay and the control vector still load, re-verified and bound to this base."""
    assert load_active(Overlay.KIND, base, vault).provenance.name == "care"
    control = load_active(ControlVector.KIND, base, vault)
    assert (control.provenance.name, control.provenance.kind) == ("terse", "control-vector")
    assert control.weights.layers == [15] and control.weights.strength == 2.0
    out = ok("verify")
    assert "care v1 (active): ok" in out and "terse v1 (active): ok" in out


def test_import_list_status_verify(home, keys, base, vault, tmp_path):
    bundle = make_control_bundle(keys, tmp_path / "terse.bundle")
    out = ok("update", "import", str(bundle))
    assert "installed control-vector terse v1, signed by" in out
    assert "terse  control-vector (active control vector)  active v1  installed v1" in ok("update", "list")
    status = ok("status")
    assert "control-vector: terse v1 (active control vector), manifest sha256" in status
    assert "terse v1 (active): ok" in ok("verify")
    # Encrypted at rest: the stored artifacts are not the plaintext, and its key is under the kind's prefix.
    state = Store.unlocked(vault).read_state()
    assert state.control == "terse" and state.overlay is None
    sha = state.items["terse"].active
    stored = (home / "store" / "objects" / sha / "artifacts" / "control.safetensors").read_bytes()
    plain = (tmp_path / f"control-1-{BASE_SHA[:8]}-576-15" / "control.safetensors").read_bytes()
    assert plain[200:264] not in stored and len(stored) > len(plain)
    assert vault.key_ids("control/") == ["control/terse/1"]
    vector = load_active(ControlVector.KIND, base, vault).weights
    assert np.isclose(np.linalg.norm(vector.directions[15]), 1.0)


def test_a_new_overlay_keeps_the_active_control_vector_and_back(home, keys, base, vault, tmp_path):
    import_bundle(make_control_bundle(keys, tmp_path / "terse.bundle"), base, vault)
    import_bundle(make_bundle(keys, tmp_path / "care.bundle"), base, vault)
    state = Store.unlocked(vault).read_state()
    assert (state.overlay, state.control) == ("care", "terse")


def test_rollback_erase_and_replay_after_erase(home, keys, base, vault, tmp_path):
    ok("update", "import", str(make_control_bundle(keys, tmp_path / "v1.bundle")))
    ok("update", "import", str(make_control_bundle(keys, tmp_path / "v2.bundle", version=2, seed=2)))
    assert "terse: v2 -> v1" in ok("update", "rollback", "terse")
    assert load_active(ControlVector.KIND, base, vault).provenance.version == 1
    out = ok("erase", "control", "terse", "--yes")
    assert "destroyed: data keys of control/terse/1, control/terse/2" in out
    assert out.count("proof:     decryption of control/terse/") == 2
    error_line(appliance("update", "rollback", "terse"), 6, "erased")
    error_line(appliance("erase", "control", "terse", "--yes"), 6, "erased")
    assert "terse  control-vector  erased  crypto-erased v1, v2" in ok("update", "list")
    assert_refused(home, tmp_path / "v2.bundle", "version-not-newer", "replay")
    ok("update", "import", str(make_control_bundle(keys, tmp_path / "v3.bundle", version=3)))
    assert load_active(ControlVector.KIND, base, vault).provenance.version == 3


def test_the_kill_wipe_erases_control_vectors(installed, vault):
    out = ok("kill", "--wipe")
    assert "control/terse/1" in out and "overlay/care/1" in out
    assert vault.key_ids("control/") == [] and vault.key_ids("overlay/") == []
    assert "terse  control-vector  erased  crypto-erased v1" in ok("update", "list")


# -- refusals: exit 3, one line, the state tree byte-identical, and nothing lost -----------------


@pytest.mark.parametrize(
    "change, reason, words",
    [
        (dict(base="0" * 64, binds="0" * 64), "binding-mismatch", ("terse v2 is bound to base 0000000000000000", BASE_SHA[:16])),
        (dict(base="0" * 64), "binding-mismatch", ("control vector is bound to base 0000", BASE_SHA)),
        (dict(hidden=512), "binding-mismatch", ("hidden_size 512 != base hidden size 576",)),
        (dict(layers=(15, 30)), "binding-mismatch", ("steers block 30", "blocks 1..29")),
        (dict(bad="nan"), "control-vector-rejected", ("direction.15 holds NaN",)),
        (dict(bad="short"), "control-vector-rejected", ("direction.15 has shape (575,), must be (576,)",)),
        (dict(signers=("alice",)), "threshold-not-met", ("1 of 2",)),
        (dict(created=utc(-10), expires=iso(-1)), "manifest-expired", ("terse v2",)),
        (dict(version=1, seed=1), "version-not-newer", ("same version again (replay)",)),
        (dict(version=1, seed=5), "version-not-newer", ("same version again (replay)",)),
        (dict(name="care"), "kind-changed", ("care is installed as a overlay", "control-vector")),
    ],
    ids=["other-base", "file-other-base", "hidden-size", "block-count", "nan", "short", "one-signer", "expired",
         "replay", "same-version-other-bytes", "kind"],
)  # fmt: skip
def test_refused_control_vector_leaves_everything_working(installed, keys, base, vault, tmp_path, change, reason, words):
    args = {"version": 2, "seed": 3, **change}
    bad = make_control_bundle(keys, tmp_path / "bad.bundle", **args)
    assert_refused(installed, bad, reason, *words)
    assert_both_work(base, vault)


def test_rollback_below_an_installed_version_is_refused(installed, keys, base, vault, tmp_path):
    import_bundle(make_control_bundle(keys, tmp_path / "v3.bundle", version=3, seed=3), base, vault)
    ok("update", "rollback", "terse")  # back to v1: v3 stays the highest ever accepted
    assert_refused(
        installed, make_control_bundle(keys, tmp_path / "v2.bundle", version=2, seed=2), "version-not-newer", "rollback"
    )
    assert_both_work(base, vault)


def test_a_manifest_without_the_two_files_is_refused(tmp_path):
    with pytest.raises(ManifestOverlayIncomplete, match="a control-vector must list"):
        create_bundle(tmp_path / "b.bundle", kind="control-vector", name="terse", version=2,
                      artifacts=control_dir(tmp_path, 2)[:1], binds_base=BASE_SHA)  # fmt: skip


@pytest.mark.parametrize(
    "args, code, reason",
    [
        (("erase", "control", "nothing", "--yes"), 5, "not-found"),
        (("erase", "control", "terse"), 3, "not-confirmed"),  # "care" typed where "terse" was asked
        (("erase", "control", "care", "--yes"), 5, "not-found"),  # an overlay's name: erase control touches no overlay
    ],
    ids=["unknown", "not-confirmed", "overlay-name"],
)
def test_refused_erase_leaves_everything_working(installed, base, vault, args, code, reason):
    before = tree_digest(installed)
    r = appliance(*args, input="care\n")
    assert r.returncode == code and r.stderr.strip().splitlines()[-1].endswith(f" [{reason}]"), r.stderr
    assert tree_digest(installed) == before
    assert_both_work(base, vault)


# -- the runtime: ask, the journal's provenance, the switch, the kill ---------------------------------------------


def _messages(home) -> list[dict]:
    fresh = Vault.unlock(home, PASSPHRASE.encode())  # what the CLI wrote, read with a vault opened after it
    try:
        return [r for sid in sessions(fresh) for r in read_session(fresh, sid) if r["kind"] == "message"]
    finally:
        fresh.zeroize()


def test_ask_names_both_in_every_message(home, keys, base, vault, tmp_path):
    import_bundle(make_bundle(keys, tmp_path / "care.bundle"), base, vault)
    import_bundle(make_control_bundle(keys, tmp_path / "terse.bundle", strength=60.0), base, vault)
    ask = ("ask", "Name a colour.", "--temperature", "0", "--max-tokens", "12")
    plain, steered = ok(*ask), ok(*ask, "--control", "on", "--overlay", "on")
    assert plain != steered  # 60 x a unit direction at block 15 changes the greedy reply
    records = _messages(home)
    assert [(r["role"], r["control"] is not None, r["overlay"] is not None) for r in records] == [
        ("user", False, False), ("assistant", False, False), ("user", True, True), ("assistant", True, True)]  # fmt: skip
    control = records[-1]["control"]
    assert control["name"] == "terse" and control["version"] == 1 and control["on"] is True and control["strength"] == 60.0
    assert control["signers"] == sorted([keys.fpr["alice"], keys.fpr["bob"]]) and control["demo_signers"] == []
    assert control["sha256"] == Store.unlocked(vault).read_state().items["terse"].active
    assert records[-1]["overlay"]["name"] == "care" and records[-1]["overlay"]["on"] is True


def test_ask_control_on_without_one_installed(home):
    before = tree_digest(home)
    error_line(appliance("ask", "Hello", "--control", "on", "--max-tokens", "2"), 5, "no-control-vector")
    assert tree_digest(home) == before


def test_the_service_switches_journals_snapshots_and_zeroes(installed, model, vault):
    with UnlockedAppliance.open(vault, model) as app:
        app.load(Overlay.KIND)
        control = app.load(ControlVector.KIND)
        session = app.session(Runtime(model), settings=SamplingSettings(temperature=0), system_prompt=None)
        snap = app.snapshot(session).item(ControlVector.KIND)
        assert snap.loaded == control.provenance and not snap.on
        assert app.toggle(session, ControlVector.KIND) is True
        snap = app.snapshot(session).item(ControlVector.KIND)
        assert snap.on and snap.fields == {"strength": 2.0} and not app.snapshot(session).item(Overlay.KIND).on
        outcome = app.reply(session, "Hi", max_tokens=4)
        assert outcome.reply.on == {ControlVector.KIND}
        assert app.toggle(session, ControlVector.KIND) is False
        sid = app.journal.session_id
        records = read_session(vault, sid)
        direction = control.weights.directions[15]
        app.drop(ControlVector.KIND)
        assert not direction.any() and ControlVector.KIND not in app.items
    toggles = [r for r in records if r["kind"] == "control-toggle"]
    assert [(t["on"], t["control"]["on"], t["after_messages"]) for t in toggles] == [(True, True, 0), (False, False, 2)]
    assert [r["control"]["on"] for r in records if r["kind"] == "message"] == [True, True]


def test_a_kill_with_wipe_zeroes_and_erases_the_control_vector(installed, model, vault):
    with pytest.raises(Killed):
        with UnlockedAppliance.open(vault, model) as app:
            app.load(Overlay.KIND)
            direction = app.load(ControlVector.KIND).weights.directions[15]
            app.open_journal()
            sid = app.journal.session_id
            os.kill(os.getpid(), WIPE_SIGNAL)  # what `appliance kill --wipe` sends the running appliance
            app.killswitch.check()
    assert not direction.any() and app.items == {}
    fresh = Vault.unlock(installed, PASSPHRASE.encode())
    try:
        (kill,) = [r for r in read_session(fresh, sid) if r["kind"] == "kill"]
        assert kill["controls_erased"] == ["control/terse/1"] and kill["overlays_erased"] == ["overlay/care/1"]
        assert fresh.key_ids("control/") == []
    finally:
        fresh.zeroize()


def test_the_build_station_commands_make_a_control_vector_bundle(home, keys, tmp_path):
    """`bundle create --kind control-vector`, two `bundle sign`s, `bundle verify`: what an operator types."""
    out = tmp_path / "terse.bundle"
    files = [str(p) for p in control_dir(tmp_path, 4)]
    ok("bundle", "create", "--kind", "control-vector", "--name", "terse", "--version", "1",
       *(a for f in files for a in ("--artifact", f)), "--binds-base", BASE_SHA, "--out", str(out))  # fmt: skip
    for signer in ("alice", "bob"):
        ok("bundle", "sign", str(out), "--key", keys.fpr[signer], "--gnupghome", str(keys.home))
    before = tree_digest(home)
    assert "verified control-vector terse v1, signed by" in ok("bundle", "verify", str(out))
    assert tree_digest(home) == before


def test_logs_show_and_resume_name_the_control_vector(home, keys, base, vault, tmp_path):
    """`logs show` names the control vector each message was made with; resuming that session once the
    vector is erased says so (a notice) and continues without it."""
    import_bundle(make_control_bundle(keys, tmp_path / "terse.bundle", strength=60.0), base, vault)
    ok("ask", "Name a colour.", "--control", "on", "--temperature", "0", "--max-tokens", "4")
    fresh = Vault.unlock(home, PASSPHRASE.encode())
    try:  # the session of the reply (pinning the signers journalled sessions of their own)
        (sid,) = [sid for sid in sessions(fresh) if any(r["kind"] == "message" for r in read_session(fresh, sid))]
    finally:
        fresh.zeroize()
    assert "control vector terse v1 on strength 60 signers" in ok("logs", "show", sid)
    ok("erase", "control", "terse", "--yes")
    r = appliance("ask", "And another?", "--resume", sid, "--temperature", "0", "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "recorded with control vector terse v1, not loaded now: continuing without it" in r.stderr + r.stdout
