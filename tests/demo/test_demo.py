"""The demo overlay and control vector: installed by `init --demo` through the real trust chain, offline, and the
overlay's gain survives llama.cpp."""

import json

import pytest
from helpers import appliance

from appliance.demo import CONTROL_DIR, DATASET, OVERLAY_DIR
from appliance.overlay.files import load_overlay_dir

OFFLINE = ["unshare", "-n"]


@pytest.fixture
def passphrase(tmp_path, monkeypatch):
    path = tmp_path / "passphrase"
    path.write_text("demo passphrase\n")
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
    assert "control-vector: radio-operator v1 (active control vector)" in status.stdout

    question = ["ask", "Will the supply convoy arrive tomorrow?", "--temperature", "0", "--max-tokens", "24"]
    on = appliance(*question, "--overlay", "on", prefix=OFFLINE)
    off = appliance(*question, "--overlay", "off", prefix=OFFLINE)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout != off.stdout

    first = _sessions()[0]  # sessions are listed oldest first: the overlay-on one
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
    last = _sessions()[-1]
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
