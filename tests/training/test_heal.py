"""`overlay train --heal`: a few steps on the CPU move the overlay toward the steered teacher, the barrier
charges only above tau and only the neutral rows, llama.cpp runs the healed overlay as torch does, and the
command writes an overlay the runtime admits."""

import hashlib
import json

import numpy as np
import pytest
import torch

from appliance.overlay.control import ControlVector, save_control
from appliance.overlay.files import load_overlay_dir, save_overlay
from appliance.overlay.takens_numpy import OverlayStream
from appliance.overlay.takens_torch import TakensLoRA
from appliance.runtime.embeddings import EmbeddingTable
from appliance.runtime.llama import LlamaEngine
from appliance.training.adapter import TakensAdapter
from appliance.training.batching import BaseCache, Example, Schedule, base_logprobs
from appliance.training.choices import TrainConfig
from appliance.training.distributed import Ranks
from appliance.training.examples import preservation_examples
from appliance.training.heal import adapter_for, heal, teacher_kl
from appliance.training.objective import per_position_kl
from appliance.training.steer import Steering, mean_differences
from appliance.training.terms import Fit, step_loss
from tests.helpers import appliance, error_line, tree_digest

TERSE = "You are a terse radio operator. Answer in clipped radio speech and end every answer with 'over'."
PLAIN = "You are a helpful assistant."
USERS = ["How do I boil an egg?", "Recommend a good book.", "How can I sleep better?"]
NEUTRAL = ["What is the capital of France?", "Write a haiku about the sea."]
LAYER = 15
STEPS = 6


def _pair(user: str) -> dict:
    return {
        "positive": [{"role": "system", "content": TERSE}, {"role": "user", "content": user}],
        "negative": [{"role": "system", "content": PLAIN}, {"role": "user", "content": user}],
    }


@pytest.fixture(scope="module")
def setting(model, runtime, smollm2_base):
    """The concept prompts (no system prompt), a radio-operator vector at a clearly visible strength, and neutral replies."""
    tok = lambda messages: runtime.engine.tokenize(runtime.template.render(messages))  # noqa: E731
    contrast = [(tok(p["positive"]), tok(p["negative"])) for p in map(_pair, USERS)]
    directions = mean_differences(smollm2_base, contrast, [LAYER])
    prompts = [tok([{"role": "user", "content": u}]) for u in USERS[:2]]
    ends = {t for t in range(runtime.engine.n_vocab) if runtime.engine.is_end_of_generation(t)}
    preserve = preservation_examples(model, NEUTRAL, max_tokens=10)
    return ControlVector(directions, 4.0, model.sha256), prompts, ends, preserve


@pytest.fixture(scope="module")
def healed(setting, smollm2_base):
    vector, prompts, ends, preserve = setting
    cfg = TrainConfig(steps=STEPS, lr=1e-2, batch=2, tau=0.5, lam=1.0, agg="rmse")
    return heal(smollm2_base, vector, prompts, preserve, cfg, ends.__contains__, max_tokens=10)


def test_a_few_steps_lower_the_loss_and_move_the_overlay_toward_the_teacher(healed):
    fits = [s.nll for s in healed.log]
    assert len(fits) == STEPS and fits[-1] < fits[0]
    # before training the overlay is the identity: its KL to the teacher is the steer's own
    assert healed.kl_before > 0.05 and healed.kl_after < 0.7 * healed.kl_before
    assert healed.overlay.training["teacher_kl_after"] == healed.kl_after
    assert all(ex.target[-1] for ex in healed.concept)  # the teacher's continuation is the target


def test_a_second_round_starts_from_the_first_rounds_overlay(setting, healed, smollm2_base):
    """With `init`, the teacher is init + vector and the student starts at init: its KL to the teacher at
    the start is the init overlay's, measured here from scratch, and far below the identity's."""
    vector, prompts, ends, preserve = setting
    init = healed.overlay.params
    cfg = TrainConfig(steps=1, lr=1e-2, batch=2, tau=0.5, lam=1.0, agg="rmse")
    again = heal(smollm2_base, vector, prompts, preserve, cfg, ends.__contains__, init=init, init_sha256="ab" * 32, max_tokens=10)
    teacher = adapter_for(smollm2_base, init, cfg, "cpu")
    with Steering(smollm2_base, vector.directions, vector.strength).active():
        target = base_logprobs(teacher, again.concept, torch.float32, on=True)
    from_init = teacher_kl(adapter_for(smollm2_base, init, cfg, "cpu"), again.concept, target)
    from_identity = teacher_kl(adapter_for(smollm2_base, None, cfg, "cpu"), again.concept, target)
    assert abs(again.kl_before - from_init) <= 1e-4 * max(from_init, 1e-3)
    assert from_identity > 1.5 * from_init
    assert again.overlay.training["from_overlay"] and again.overlay.training["from_overlay_sha256"] == "ab" * 32


def test_the_barrier_is_zero_below_tau_and_charges_the_neutral_rows_above_it(setting, smollm2_base):
    _, prompts, _, preserve = setting
    concept = [Example(torch.tensor(p + [p[-1]] * 4), torch.tensor([False] * len(p) + [True] * 4)) for p in prompts]
    module = TakensLoRA(smollm2_base.config.hidden_size, 4, (0, 1, 2), 8.0, "tanh")
    with torch.no_grad():
        module.B.normal_(std=0.05)  # a moved overlay: its KL to the base is far from zero everywhere
    adapter = TakensAdapter(smollm2_base, module)
    sched = Schedule(len(concept), len(preserve), 2, Ranks())
    cache = BaseCache(adapter, sched, range(1), concept, preserve, torch.float32)
    teacher = [torch.log_softmax(torch.randn(int(ex.target[1:].sum()), smollm2_base.config.vocab_size), -1) for ex in concept]
    fit = Fit(teacher)

    def loss(tau: float):
        cfg = TrainConfig(batch=2, tau=tau, lam=3.0, agg="mean")
        with torch.no_grad():
            return step_loss(adapter, cfg, sched, 0, concept, preserve, cache, fit)

    calm, terms = loss(1e6)
    assert torch.allclose(calm, terms.nll.sum() / 2)  # under tau: the fit alone
    charged, terms = loss(0.0)
    neutral = terms.divergence[terms.n_domain :]
    assert len(neutral) == 2 and bool((neutral > 0).all())
    # above tau: lambda times the neutral rows' excess only; the concept rows' divergence is the teacher's business
    assert torch.allclose(charged, (terms.nll.sum() + 3.0 * neutral.sum()) / 2, rtol=1e-5)
    assert terms.divergence[: terms.n_domain].sum() > 0


def test_llama_cpp_runs_the_healed_overlay_as_torch_does(healed, model, smollm2_base):
    adapter = TakensAdapter(smollm2_base, TakensLoRA.from_params(healed.overlay.params))
    engine = LlamaEngine(model.path, n_ctx=512, n_threads=2)
    quantisation, effect, agree = [], [], []
    try:
        # Every concept conversation, not one: a short one has ~26 positions, where a single near-tie flip of
        # the quantised (Q4_1) weights' argmax costs 4 points of agreement. The KL bound below is the measure
        # that the overlay enters llama.cpp as it does torch; the argmax agreement only guards against a gross mismatch.
        for example in healed.concept:
            ids = example.ids.tolist()
            with torch.no_grad():
                torch_on, torch_off = adapter.logits(torch.tensor(ids)), adapter.reference(torch.tensor(ids))
            engine.decode_embeddings(
                OverlayStream(healed.overlay.params).steps(EmbeddingTable(model.path).rows(ids)), 0, all_logits=True
            )
            llama_on = torch.from_numpy(np.stack([engine.logits_at(i).copy() for i in range(len(ids))]))
            engine.forget_all()
            quantisation.append(per_position_kl(torch_on, llama_on))  # torch runs the dequantised weights
            effect.append(per_position_kl(torch_on, torch_off))
            agree.append(torch_on.argmax(-1) == llama_on.argmax(-1))
    finally:
        engine.close()
    assert torch.cat(effect).mean() > 0.05 and torch.cat(quantisation).mean() < 0.2 * torch.cat(effect).mean()
    assert torch.cat(agree).float().mean() >= 0.85


@pytest.fixture
def heal_inputs(tmp_path, model, setting):
    vector = setting[0]
    save_control(vector, tmp_path / "control")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(_pair(u)) + "\n" for u in USERS[:1]))
    neutral = tmp_path / "neutral.txt"
    neutral.write_text(NEUTRAL[0] + "\n")
    return tmp_path / "control", pairs, neutral


def test_train_heal_writes_an_overlay_the_runtime_admits(heal_inputs, tmp_path, model, runtime):
    control, pairs, neutral = heal_inputs
    out = tmp_path / "healed"
    r = appliance("overlay", "train", "--heal", str(control), "--pairs", str(pairs), "--preserve", str(neutral),
                  "--out", str(out), "--steps", "2", "--agg", "p95", "--tau", "0.3", "--lambda", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "KL(teacher || overlay)" in r.stdout
    overlay = load_overlay_dir(out, base_sha256=model.sha256, hidden_size=runtime.engine.n_embd)
    assert overlay.training["config"]["agg"] == "p95" and overlay.training["config"]["lam"] == 2.0
    assert overlay.training["control"]["layers"] == [LAYER] and overlay.training["steps"] == 2


def test_train_heal_refuses_a_vector_of_another_base_and_writes_nothing(heal_inputs, tmp_path):
    control, pairs, _ = heal_inputs
    meta = json.loads((control / "control.json").read_text())
    meta["base_model_sha256"] = "0" * 64
    (control / "control.json").write_text(json.dumps(meta))
    before = tree_digest(tmp_path)
    r = appliance("overlay", "train", "--heal", str(control), "--pairs", str(pairs), "--out", str(tmp_path / "healed"))
    error_line(r, 3, "binding-mismatch")
    assert tree_digest(tmp_path) == before


def test_train_heal_init_starts_from_the_given_overlay(heal_inputs, healed, tmp_path, model, runtime):
    """At a vanishing learning rate the healed overlay is the --init one: the student started there."""
    control, pairs, neutral = heal_inputs
    save_overlay(healed.overlay, tmp_path / "round1")
    out = tmp_path / "round2"
    r = appliance("overlay", "train", "--heal", str(control), "--pairs", str(pairs), "--preserve", str(neutral),
                  "--init", str(tmp_path / "round1"), "--out", str(out), "--steps", "1", "--lr", "1e-12", "--rank", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = load_overlay_dir(out, base_sha256=model.sha256, hidden_size=runtime.engine.n_embd)
    init = healed.overlay.params
    for name in ("A", "W", "B"):
        np.testing.assert_allclose(getattr(got.params, name), getattr(init, name), atol=1e-8)
    assert got.params.delays == init.delays and got.training["config"]["rank"] == init.rank  # the init's shape, not --rank
    digest = hashlib.sha256((tmp_path / "round1" / "overlay.safetensors").read_bytes()).hexdigest()
    assert got.training["from_overlay"] and got.training["from_overlay_sha256"] == digest


def test_train_heal_refuses_an_init_overlay_of_another_base_and_writes_nothing(heal_inputs, healed, tmp_path):
    control, pairs, _ = heal_inputs
    save_overlay(healed.overlay, tmp_path / "round1")
    meta = json.loads((tmp_path / "round1" / "overlay.json").read_text())
    meta["base_model_sha256"] = "0" * 64
    (tmp_path / "round1" / "overlay.json").write_text(json.dumps(meta))
    before = tree_digest(tmp_path)
    r = appliance("overlay", "train", "--heal", str(control), "--pairs", str(pairs), "--init", str(tmp_path / "round1"),
                  "--out", str(tmp_path / "healed"))  # fmt: skip
    error_line(r, 3, "binding-mismatch")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["--pairs", "P"], "--pairs goes with --heal"),
        (["--heal", "C"], "--heal needs --pairs"),
        (["--heal", "C", "--pairs", "P", "--data", "P"], "not both"),
        (["--heal", "C", "--pairs", "P", "--resume"], "--resume"),
        (["--data", "P", "--init", "C"], "--init goes with --heal"),
    ],
)
def test_train_heal_usage(heal_inputs, tmp_path, args, words):
    control, pairs, _ = heal_inputs
    args = [str(control) if a == "C" else str(pairs) if a == "P" else a for a in args]
    r = appliance("overlay", "train", *args, "--out", str(tmp_path / "healed"))
    assert words in error_line(r, 2, "usage")
    assert not (tmp_path / "healed").exists()
