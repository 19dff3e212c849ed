"""The demo overlay and control vector: installed by `init --demo` through the real trust chain, offline, and the
overlay's gain survives llama.cpp."""

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import PASSPHRASE, appliance, make_vault_home

from appliance.demo import CONTROL_DIR, DATASET, OVERLAY_DIR
from appliance.demo import install as demo_install
from appliance.demo.install import DEMO_ITEMS, MEMORY_DIR, install_demo, key_storage
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay, load_overlay_dir
from appliance.service import ItemState, Snapshot
from appliance.store import ActiveBase
from appliance.store.layout import Store
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.trust.policy import item_id
from appliance.trust.signatures import scratch_gpg
from appliance.ui.widgets import StatusBar
from appliance.vault import Vault

OFFLINE = ["unshare", "-n"]


@pytest.fixture
def passphrase(tmp_path, monkeypatch):
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(path))


def _sessions():
    listing = appliance("logs", "list", prefix=OFFLINE)
    assert listing.returncode == 0, listing.stderr
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip() and "(trust-change)" not in line]


def test_init_demo_end_to_end_offline(home, passphrase, tmp_path):
    r = appliance("init", "--demo", prefix=OFFLINE)
    assert r.returncode == 0, r.stderr
    assert "demo keys" in r.stdout and "private halves destroyed" in r.stdout

    status = appliance("status", prefix=OFFLINE)
    assert status.returncode == 0, status.stderr
    assert "field-manual-demo v1 (active overlay)" in status.stdout and status.stdout.count("[DEMO KEY]") == 4
    assert "demo signers pinned: they admit only the demo items" in status.stdout
    assert "control-vector: radio-operator v1 (active control vector)" in status.stdout

    question = ["ask", "Will the supply convoy arrive tomorrow?", "--temperature", "0", "--max-tokens", "24"]
    on = appliance(*question, "--overlay", "on", prefix=OFFLINE)
    off = appliance(*question, "--overlay", "off", prefix=OFFLINE)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout != off.stdout

    first = _sessions()[1]  # sessions are listed newest first: the overlay-off one, then the overlay-on one
    out = tmp_path / "on.jsonl"
    assert appliance("logs", "export", first, "--format", "jsonl", "--out", str(out), prefix=OFFLINE).returncode == 0
    reply = [json.loads(line) for line in out.read_text().splitlines()][-1]
    overlay = reply["overlay"]
    assert overlay["name"] == "field-manual-demo" and overlay["on"] is True
    assert len(overlay["signers"]) == 2 and overlay["demo_signers"] == overlay["signers"]

    again = appliance("init", "--demo", prefix=OFFLINE)
    assert again.returncode == 0 and again.stdout.count("already installed") == 2


def test_the_demo_control_vector_is_installed_off_and_switches_on(home, passphrase, tmp_path):
    assert appliance("init", "--demo").returncode == 0
    question = ["ask", "What is the weather like today?", "--temperature", "0", "--max-tokens", "24"]
    off, on = appliance(*question), appliance(*question, "--control", "on")  # off by default, as the overlay
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout != off.stdout
    last = _sessions()[0]  # newest first: the control-on one
    out = tmp_path / "on.jsonl"
    assert appliance("logs", "export", last, "--format", "jsonl", "--out", str(out)).returncode == 0
    reply = [json.loads(line) for line in out.read_text().splitlines()][-1]
    control = reply["control"]
    assert control["name"] == "radio-operator" and control["on"] is True and reply["overlay"] is None
    assert len(control["signers"]) == 2 and control["demo_signers"] == control["signers"]
    assert control["strength"] == json.loads((CONTROL_DIR / "control.json").read_text())["strength"]


def test_demo_gain_measured_in_llama_cpp_is_at_least_80_percent_of_torch(model, runtime):
    from appliance.overlay.takens_torch import TakensLoRA
    from appliance.training.adapter import TakensAdapter, load_base
    from appliance.training.dataset import load_dataset
    from appliance.training.evaluate import nll_llama
    from appliance.training.examples import config_of, split_examples
    from appliance.training.terms import heldout_nll

    overlay = load_overlay_dir(OVERLAY_DIR, base_sha256=model.sha256, hidden_size=runtime.engine.n_embd)
    cfg = config_of(overlay)
    held, _ = split_examples(model, load_dataset(DATASET), cfg)
    held = held[:12]
    adapter = TakensAdapter(load_base(model), TakensLoRA.from_params(overlay.params))
    torch_gain = heldout_nll(adapter, held, cfg, on=False) - heldout_nll(adapter, held, cfg)
    llama_gain = nll_llama(runtime, None, held) - nll_llama(runtime, overlay, held)
    assert torch_gain > 0.3, "the demo overlay must measurably change the model on its domain"
    assert llama_gain >= 0.8 * torch_gain, (llama_gain, torch_gain)


# -- the demo signers: memory-only keys, scoped to the demo items, said on screen ----------------


@pytest.mark.parametrize(
    "mounts, where, why",
    [
        ("tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n", MEMORY_DIR, ""),
        ("/dev/sda1 / ext4 rw 0 0\n", Path("/tmp"), "/dev/shm is not a mount point, not memory-only"),
        ("tmpfs /dev/shm tmpfs rw 0 0\n/dev/sdb1 /dev/shm ext4 rw 0 0\n", Path("/tmp"), "/dev/shm is a ext4 filesystem"),
    ],
    ids=["tmpfs", "absent", "mounted-over"],
)
def test_demo_keys_are_made_in_memory_only_storage_or_say_why_not(tmp_path, mounts, where, why):
    (tmp_path / "mounts").write_text(mounts)
    got, note = key_storage(tmp_path / "mounts")
    assert got == where and why in note and bool(note) == bool(why)


def test_install_demo_keys_live_in_memory_and_the_signers_are_scoped(home, monkeypatch):
    if key_storage()[1]:
        pytest.skip(f"no memory-only storage here: {key_storage()[1]}")
    make_vault_home(home)
    homes = []

    @contextmanager
    def recorded(keyring=None, *, under):
        with scratch_gpg(keyring, under=under) as (gpg, tmp):
            homes.append(tmp)
            yield gpg, tmp

    monkeypatch.setattr(demo_install, "scratch_gpg", recorded)
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        demo = install_demo(ActiveBase(verify_pinned(embedded_pin()), hidden_size=576), vault)
        policy = Store.unlocked(vault).trust().policy()
    assert [h.parent for h in homes] == [MEMORY_DIR] and not homes[0].exists() and demo.storage_note == ""
    scope = {item_id(item.kind, item.name) for item in DEMO_ITEMS}
    assert set(policy.demo) == set(demo.signers) == set(policy.signers)
    assert all(policy.scope(f) == scope for f in demo.signers)


def test_the_status_bar_says_demo_signers_pinned():
    bar = StatusBar()
    items = (ItemState(Overlay.KIND), ItemState(ControlVector.KIND))
    bar.show(Snapshot("base", "ab" * 32, items, None, demo_signers_pinned=True), audit=False)
    assert "demo signers pinned" in bar.render().plain
    bar.show(Snapshot("base", "ab" * 32, items, None), audit=False)
    assert "demo signers" not in bar.render().plain
