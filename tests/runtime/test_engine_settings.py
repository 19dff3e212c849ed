"""Where llama.cpp computes: the settings, `--gpu-layers` on a machine without a card, and the device in the journal.

The card itself is tested by the GPU tier (tests/gpu); here, what every machine must do without one."""

import ctypes

import pytest
from helpers import appliance, error_line, tree_digest

from appliance.journal.transcript import device_text, provenance_line
from appliance.runtime import engine_settings
from appliance.runtime.backends import Gpu
from appliance.runtime.engine_settings import EngineSettings, layers_that_fit, parse_request, resolve
from appliance.runtime.llama import model_params
from appliance.vault import Vault

H100 = Gpu(0, "CUDA0", "NVIDIA H100 80GB HBM3", 80 << 30, 81 << 30)


@pytest.fixture
def initialised(home, tmp_path, monkeypatch):
    (tmp_path / "passphrase").write_text("test passphrase\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(tmp_path / "passphrase"))
    r = appliance("init")
    assert r.returncode == 0, r.stderr
    return home


@pytest.mark.parametrize("text, request_", [("0", 0), ("12", 12), ("all", "all"), ("auto", "auto")])
def test_gpu_layers_parse(text, request_):
    assert parse_request(text) == request_


@pytest.mark.parametrize("text", ["-1", "some", "1.5", ""])
def test_gpu_layers_refuse_what_is_not_a_count(text):
    with pytest.raises(ValueError):
        parse_request(text)


def test_no_card_means_the_cpu_with_a_note_and_no_device_for_llama_cpp(model, monkeypatch):
    monkeypatch.setattr(engine_settings, "gpus", list)
    monkeypatch.setattr(engine_settings, "has_gpu_backend", lambda: True)
    settings, note = resolve("all", model.path, EngineSettings())
    assert settings.gpu is None and settings.gpu_layers == 0 and note.startswith("computing on the CPU")
    params = model_params(settings)
    assert params.n_gpu_layers == 0
    assert ctypes.cast(params.devices, ctypes.POINTER(ctypes.c_void_p))[0] is None, "an empty device list: the CPU alone"


def test_auto_in_a_build_without_a_gpu_backend_says_nothing(model, monkeypatch):
    monkeypatch.setattr(engine_settings, "gpus", list)
    monkeypatch.setattr(engine_settings, "has_gpu_backend", lambda: False)
    assert resolve("auto", model.path, EngineSettings()) == (EngineSettings(), None)


def test_auto_takes_the_layers_that_fit_output_layer_first(model, monkeypatch):
    monkeypatch.setattr(engine_settings, "gpus", lambda: [H100])
    settings, note = resolve("auto", model.path, EngineSettings())
    assert note is None and settings.gpu == H100 and settings.gpu_layers == 31, "30 blocks and the output layer"
    assert settings.sequences == 1, "on a card the decoder keeps nothing: one KV sequence"
    assert settings.device(30) == {"name": H100.description, "gpu_layers": 31, "of": 31}
    reserve = engine_settings.COMPUTE_RESERVE
    assert layers_that_fit(model.path, EngineSettings(), reserve) == 0
    all_of_it = layers_that_fit(model.path, EngineSettings(), 80 << 30)
    small = layers_that_fit(model.path, EngineSettings(n_ctx=512, sequences=1), reserve + (12 << 20))
    assert 0 < small < all_of_it == 31
    assert resolve(4, model.path, EngineSettings())[0].sequences == 1
    assert resolve(0, model.path, EngineSettings())[0].sequences == 2, "the CPU keeps a sequence per state"


def test_a_device_record_reads_and_old_records_have_none():
    record = {"base": {"name": "b", "version": 1, "sha256": "0" * 64}, "overlay": None, "settings": {}}
    assert "device" not in provenance_line(record)
    gpu = {"name": "NVIDIA H100 80GB HBM3", "gpu_layers": 31, "of": 31}
    assert provenance_line({**record, "device": gpu}).endswith("; device NVIDIA H100 80GB HBM3 (31/31 layers)")
    assert device_text({"name": "cpu"}) == "cpu"


@pytest.mark.parametrize("command", [["ask", "hello"], ["chat"]])
def test_gpu_layers_without_a_card_is_refused_and_nothing_is_written(initialised, command):
    before = tree_digest(initialised)
    line = error_line(appliance(*command, "--gpu-layers", "all"), 2, "no-gpu")
    assert "--gpu-layers 0" in line
    assert tree_digest(initialised) == before


def test_the_choice_is_kept_and_a_kept_card_that_is_gone_runs_on_the_cpu_saying_why(initialised, tmp_path):
    r = appliance("ask", "--gpu-layers", "0", "--max-tokens", "4", "--temperature", "0", "Hi")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "--gpu-layers 0" in appliance("status").stdout
    vault = Vault.unlock(initialised, b"test passphrase")
    vault.set_setting(engine_settings.GPU_LAYERS_SETTING, "all")  # chosen on a machine with a card
    vault.zeroize()
    r = appliance("ask", "--max-tokens", "4", "--temperature", "0", "Hi")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("note: computing on the CPU: ") and len(r.stderr.splitlines()) == 1
    session = appliance("logs", "list").stdout.split()[0]
    shown = appliance("logs", "show", session).stdout
    assert shown.count("; device cpu") == 2, shown
