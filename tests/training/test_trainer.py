"""The trainer on the real base (dequantised from the embedded GGUF): a few steps on a tiny dataset."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from appliance.overlay.files import load_overlay_dir
from appliance.overlay.params import OverlayParams
from appliance.overlay.takens_torch import TakensLoRA
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Session
from appliance.training.adapter import TakensAdapter
from appliance.training.choices import TrainConfig
from appliance.training.dataset import load_dataset
from appliance.training.examples import encode
from appliance.training.terms import step_terms
from appliance.training.trainer import optimise, train

CONVERSATIONS = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": "Unknown. I will not guess. Check the log."}]
    for q in ("Is the relay up?", "Who sent this file?", "Is the key safe?", "Will it rain?")
]


CFG = TrainConfig(steps=8, lr=1e-2, holdout=0.25, max_len=64, checkpoint_every=4, seed=3)


@pytest.fixture(scope="module")
def base(smollm2_base):
    return smollm2_base


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model, base):
    tmp = tmp_path_factory.mktemp("train")
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    result = train(model, load_dataset(data), CFG, tmp / "out", base=base)
    return result, tmp / "out", load_dataset(data)


def test_a_few_steps_lower_the_training_loss(trained):
    result, _, _ = trained
    nll = [s.nll for s in result.log]
    assert len(nll) == 8
    assert np.mean(nll[-3:]) < np.mean(nll[:3])


def test_heldout_nll_improves_on_this_tiny_domain(trained):
    result, _, _ = trained
    assert result.heldout_nll_on < result.heldout_nll_off


def test_trained_files_load_in_the_runtime_and_pass_the_binding_check(trained, model, runtime):
    result, out, dataset = trained
    overlay = load_overlay_dir(out, base_sha256=model.sha256, hidden_size=runtime.engine.n_embd)
    assert overlay.training["dataset_sha256"] == dataset.sha256
    assert overlay.training["steps"] == 8
    assert np.array_equal(overlay.params.B, result.overlay.params.B)
    reply = Session.switched_on(runtime, overlay, settings=GREEDY).generate("Is the relay up?", max_tokens=12)
    assert reply.on == {overlay.KIND} and reply.tokens


def test_a_killed_run_resumes_to_the_same_overlay(tmp_path, model, base, trained):
    uninterrupted, _, dataset = trained

    class Killed(Exception):
        pass

    def kill_after_step_5(entry):
        if entry.step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(model, dataset, CFG, tmp_path, on_step=kill_after_step_5, base=base)  # checkpoint at step 4
    resumed = train(model, dataset, CFG, tmp_path, resume=True, base=base)
    assert [s.step for s in resumed.log] == list(range(1, 9))
    assert np.array_equal(resumed.overlay.params.B, uninterrupted.overlay.params.B)


def test_resume_with_other_settings_is_refused(tmp_path, model, base, trained):
    from appliance.training.trainer import CheckpointMismatch

    _, out, dataset = trained
    with pytest.raises(CheckpointMismatch):
        train(model, dataset, TrainConfig(**{**CFG.__dict__, "lr": 0.5}), out, resume=True, base=base)


def test_reference_pass_is_the_base(model, runtime, base):
    """Logits of the reference pass (embeddings in, no overlay) equal the base model's own token path."""
    ex = encode(runtime, CONVERSATIONS[0], 64)
    with torch.no_grad():
        by_ids = base(input_ids=ex.ids[None]).logits
        E = base.get_input_embeddings()(ex.ids[None])
        by_embeddings = base(inputs_embeds=E).logits
        zero = TakensLoRA.from_params(OverlayParams.random(576, b_scale=0.0))
        by_zero_overlay = base(inputs_embeds=zero(E)).logits
    assert torch.equal(by_ids, by_embeddings)
    assert torch.equal(by_ids, by_zero_overlay)
    adapter = TakensAdapter(base, zero)
    nll_off, _kl_off = step_terms(adapter, ex, TrainConfig(), on=False)
    nll_on, kl_on = step_terms(adapter, ex, TrainConfig())
    assert nll_on.item() == nll_off.item()
    assert float(kl_on.abs().max()) == 0.0


def test_preservation_replies_are_the_bases_own_and_join_the_barrier(model, base, trained, tmp_path):
    from appliance.training.examples import preservation_examples

    _, _, dataset = trained
    (neutral,) = preservation_examples(model, ["Write a haiku about rain."], max_tokens=12)
    assert neutral.target.sum() > 0 and not neutral.target[0]  # the reply is the target, the prompt is not
    adapter = TakensAdapter(base, TakensLoRA.from_params(OverlayParams.random(576, b_scale=0.0)))
    assert float(step_terms(adapter, neutral, CFG)[1].abs().max()) == 0.0  # the base's own reply: no divergence yet
    with torch.no_grad():  # the torch base (dequantised) would write the same reply as llama.cpp did
        predicted = adapter.reference(neutral.ids)[:-1].argmax(-1)[neutral.target[1:]]
    assert (predicted == neutral.ids[1:][neutral.target[1:]]).float().mean() >= 0.8
    # Joined: with tau 0 the first step pays the barrier on the reply twice, as a domain example and as preservation.
    first_barrier = []
    for preserve in ([], [neutral]):
        moved = TakensAdapter(base, TakensLoRA.from_params(OverlayParams.random(576, b_scale=0.1)))
        log, _ = optimise(moved, [neutral], replace(CFG, steps=1, tau=0.0), None, preserve=preserve)
        first_barrier.append(log[0].barrier)
    assert first_barrier[0] > 0 and first_barrier[1] == pytest.approx(2 * first_barrier[0], rel=1e-5)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 2})
    result = train(model, dataset, cfg, tmp_path, base=base, preserve_prompts=["Write a haiku about rain."])
    assert result.overlay.training["preservation_replies"] == 1
    assert "neutral base reply" in result.overlay.training["recipe"]
