"""The trainer on Gemma 3 270M (its GGUF read by transformers, dequantised), and our embedding path exact on Gemma.

The Gemma GGUF carries no chat template: the runtime renders with llama.cpp's built-in `gemma`, which
has no system role (the same text as Gemma's own template, gemma3_chat_template.jinja beside this
file: tests/runtime/test_chat_template.py).
"""

import json

import numpy as np
import pytest
import torch

from appliance.overlay.files import load_overlay_dir
from appliance.overlay.params import OverlayParams
from appliance.overlay.takens_numpy import OverlayStream
from appliance.overlay.takens_torch import TakensLoRA
from appliance.training.adapter import TakensAdapter
from appliance.training.choices import TrainConfig
from appliance.training.dataset import load_dataset
from appliance.training.examples import encode
from appliance.training.terms import heldout_nll
from appliance.training.trainer import train

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are the assistant on an isolated field appliance."},
        {"role": "user", "content": q},
        {"role": "assistant", "content": "Unknown. I will not guess. Check the log."},
    ]
    for q in ("Is the relay up?", "Who sent this file?", "Is the key safe?", "Will it rain?", "Is the road open?")
]


@pytest.fixture(scope="module")
def gemma_runtime(gemma_model):
    from appliance.runtime.session import Runtime

    runtime = Runtime(gemma_model, n_ctx=512, sequences=1)
    yield runtime
    runtime.close()


def _all_logits(engine, feed) -> np.ndarray:
    engine.forget_all()
    n = feed()
    return np.stack([engine.logits_at(i).copy() for i in range(n)])


def test_gemma_rows_through_the_embedding_path_give_the_token_paths_logits_bit_for_bit(gemma_runtime):
    """llama.cpp scales Gemma's token embeddings by sqrt(n_embd) for token input only: our rows come scaled."""
    engine, table = gemma_runtime.engine, gemma_runtime.embeddings
    ids = encode(gemma_runtime, CONVERSATIONS[0], 128).ids.tolist()
    assert table.architecture == "gemma3" and table.scale == np.float32(np.sqrt(np.float32(640)))
    by_tokens = _all_logits(engine, lambda: (engine.decode_tokens(ids, 0, all_logits=True), len(ids))[1])
    rows = table.rows(ids)
    by_rows = _all_logits(engine, lambda: (engine.decode_embeddings(rows, 0, all_logits=True), len(ids))[1])
    identity = OverlayStream(OverlayParams.random(640, seed=1, b_scale=0.0))  # B = 0: the overlay's identity
    through_overlay = identity.steps(rows)
    by_overlay = _all_logits(engine, lambda: (engine.decode_embeddings(through_overlay, 0, all_logits=True), len(ids))[1])
    unscaled = _all_logits(engine, lambda: (engine.decode_embeddings(rows / table.scale, 0, all_logits=True), len(ids))[1])
    gemma_runtime.decoder.reset()
    assert np.array_equal(by_rows, by_tokens)
    assert np.array_equal(by_overlay, by_tokens)
    assert not np.allclose(unscaled, by_tokens, atol=1.0)  # without the scale the model reads other inputs


def test_gemma_rows_match_the_torch_bases_embedding(gemma_runtime, gemma_base):
    """transformers' Gemma embedding (dequantised table times its own sqrt(640)) equals our rows exactly."""
    ids = list(range(0, 262144, 4099))
    with torch.no_grad():
        theirs = gemma_base.get_input_embeddings()(torch.tensor(ids)).numpy()
    assert np.array_equal(gemma_runtime.embeddings.rows(ids), theirs)


def test_a_system_message_folds_into_the_first_user_turn_of_a_template_without_system_role(gemma_runtime):
    """llama.cpp's built-in `gemma`, the runtime's for a GGUF without a template, folds it as Gemma's own does."""
    ex = encode(gemma_runtime, CONVERSATIONS[0], 128)
    engine = gemma_runtime.engine
    text = "".join(engine.token_text(t) for t in ex.ids.tolist())
    targets = "".join(engine.token_text(t) for t, is_target in zip(ex.ids.tolist(), ex.target.tolist()) if is_target)
    assert ex.ids[0].item() == engine.tokenize("<bos>")[0]
    assert "<start_of_turn>user\nYou are the assistant on an isolated field appliance.\n\nIs the relay up?" in text
    assert targets == "Unknown. I will not guess. Check the log.<end_of_turn>\n"


def test_a_few_steps_on_gemma_and_llama_cpp_reproduces_the_overlays_gain(tmp_path, gemma_model, gemma_base, gemma_runtime):
    from appliance.training.evaluate import nll_llama

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    cfg = TrainConfig(steps=6, batch=2, lr=2e-2, holdout=0.0, max_len=96, checkpoint_every=100, seed=1)
    result = train(gemma_model, load_dataset(data), cfg, tmp_path / "out", base=gemma_base)
    overlay = load_overlay_dir(tmp_path / "out", base_sha256=gemma_model.sha256, hidden_size=640)
    assert overlay.training["config"]["batch"] == 2

    examples = [encode(gemma_runtime, c, 96) for c in CONVERSATIONS]
    adapter = TakensAdapter(gemma_base, TakensLoRA.from_params(overlay.params))
    torch_gain = heldout_nll(adapter, examples, cfg, on=False) - heldout_nll(adapter, examples, cfg)
    llama_gain = nll_llama(gemma_runtime, None, examples) - nll_llama(gemma_runtime, overlay, examples)
    assert result.log[-1].nll < result.log[0].nll
    assert torch_gain > 0.2, "a few steps must measurably change Gemma on these conversations"
    assert llama_gain >= 0.8 * torch_gain, (llama_gain, torch_gain)


def test_an_architecture_transformers_cannot_load_is_a_usage_error(tmp_path):
    from gguf import GGUFWriter

    from appliance.training.adapter import BaseNotTrainable, load_base
    from appliance.trust.builtin import VerifiedModel

    path = tmp_path / "rwkv.gguf"
    writer = GGUFWriter(str(path), arch="rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BaseNotTrainable) as refused:
        load_base(VerifiedModel("rwkv", 1, path, "0" * 64))
    assert refused.value.exit_code == 2 and refused.value.reason == "base-not-trainable" and "rwkv6" in str(refused.value)
