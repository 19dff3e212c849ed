"""`overlay steer`: the pairs file's rules, mean differences read where they are written, torch and llama.cpp
steering the same block, and a strength whose p95 per-token KL on neutral prompts meets the budget."""

import json

import numpy as np
import pytest
import torch

from appliance.errors import UsageError
from appliance.overlay.control import ControlVector, load_control_dir
from appliance.runtime.llama import LlamaEngine
from appliance.training.adapter import load_base
from appliance.training.dataset import DatasetError, load_pairs
from appliance.training.objective import per_position_kl
from appliance.training.steer import KLMeter, Steering, calibrate, logits, mean_differences, steer

TERSE = "You are a terse radio operator. Answer in clipped radio speech and end every answer with 'over'."
PLAIN = "You are a helpful assistant."
USERS = ["How do I boil an egg?", "What is the weather like on Mars?", "Recommend a good book."]
NEUTRAL = ["Write a haiku about the sea.", "What is the capital of France?", "Give me three tips for a job interview."]


def _pair(user: str, pos: str = TERSE, neg: str = PLAIN) -> dict:
    return {
        "positive": [{"role": "system", "content": pos}, {"role": "user", "content": user}],
        "negative": [{"role": "system", "content": neg}, {"role": "user", "content": user}],
    }


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(_pair(u)) + "\n" for u in USERS))
    return path


@pytest.fixture(scope="module")
def base(model):
    return load_base(model)


@pytest.fixture(scope="module")
def engine(model):
    e = LlamaEngine(model.path, n_ctx=512, n_threads=2)
    yield e
    e.close()


def test_pairs_load(pairs_file):
    pairs = load_pairs(pairs_file)
    assert len(pairs.pairs) == 3 and len(pairs.sha256) == 64
    assert pairs.pairs[0].positive[0]["content"] == TERSE


@pytest.mark.parametrize(
    "line, word",
    [
        ("{", "JSON"),
        (json.dumps({"positive": []}), "exactly 'positive' and 'negative'"),
        (json.dumps({**_pair("Hi"), "extra": 1}), "exactly"),
        (json.dumps({"positive": [], "negative": _pair("Hi")["negative"]}), "non-empty"),
        (
            json.dumps({"positive": [{"role": "user", "content": "a"}], "negative": [{"role": "user", "content": "b"}]}),
            "same user",
        ),
        (
            json.dumps({**_pair("Hi"), "negative": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}]}),
            "end with a user turn",
        ),
        (
            json.dumps({**_pair("Hi"), "positive": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}]}),
            "only come first",
        ),
        (json.dumps({**_pair("Hi"), "positive": [{"role": "robot", "content": "Hi"}]}), "unknown role"),
    ],
)
def test_bad_pairs_are_refused_with_their_line(tmp_path, line, word):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_pair("Fine.")) + "\n" + line + "\n")
    with pytest.raises(DatasetError) as e:
        load_pairs(path)
    assert e.value.exit_code == 2 and f"{path}:2" in str(e.value) and word in str(e.value), str(e.value)


def test_calibrate_meets_the_budget_or_says_it_cannot():
    c, log = calibrate(lambda c: c * c, budget=2.0)
    assert abs(c * c - 2.0) <= 0.04 and log[0] == (1.0, 1.0)
    with pytest.raises(UsageError):
        calibrate(lambda c: 1e-9 * c, budget=1.0)


def test_mean_difference_is_read_at_the_block_it_is_written_for(base, engine):
    pos, neg = engine.tokenize("Radio check, over."), engine.tokenize("Hello, how are you?")
    directions = mean_differences(base, [(pos, neg)], [1, 10, 28])
    with torch.no_grad():  # transformers' hidden_states[L + 1] is block L's output (before the final norm for L < last)
        hp = base(torch.tensor(pos)[None], output_hidden_states=True).hidden_states
        hn = base(torch.tensor(neg)[None], output_hidden_states=True).hidden_states
    for n in (1, 10, 28):
        np.testing.assert_allclose(directions[n], (hp[n + 1][0, -1] - hn[n + 1][0, -1]).numpy(), atol=1e-4)


def test_torch_and_llama_cpp_steer_the_same_block(base, engine, model):
    """direction.L added at block L in torch gives llama.cpp's logits with direction.L set; a block off gives far worse."""
    ids = engine.tokenize("The radio operator checked the batteries and then the antenna before dawn.")
    direction = np.random.default_rng(0).standard_normal(576).astype(np.float32)
    L = 10

    def llama(applied):
        engine.set_control(applied)
        engine.forget_from(0)
        engine.decode_tokens(ids, 0, all_logits=True)
        return torch.from_numpy(np.stack([engine.logits_at(i).copy() for i in range(len(ids))]))

    llama_base = llama(None)
    llama_steered = llama(ControlVector({L: direction}, 1.0, model.sha256).applied(engine.n_layer))
    engine.set_control(None)
    quantisation = per_position_kl(logits(base, ids), llama_base).mean()  # torch runs the dequantised weights
    effect = per_position_kl(llama_steered, llama_base).mean()
    at = {
        n: per_position_kl(logits(base, ids, Steering(base, {n: direction}, 1.0)), llama_steered).mean()
        for n in (L - 1, L, L + 1)
    }
    assert effect > 10 * quantisation, "the vector must move the model well past the quantisation noise"
    assert at[L] < 3 * quantisation
    assert at[L - 1] > 5 * at[L] and at[L + 1] > 5 * at[L]


def test_steer_calibrates_the_strength_to_the_budget(base, model, pairs_file, tmp_path):
    from appliance.overlay.control import save_control

    vector = steer(model, load_pairs(pairs_file), NEUTRAL, [12], budget=0.5, max_tokens=12, base=base)
    assert vector.layers == [12] and vector.base_model_sha256 == model.sha256 and vector.strength > 0
    cal = vector.provenance["calibration"]
    assert abs(cal["achieved"] - 0.5) <= 0.01 and cal["statistic"] == "p95"
    # measured again from scratch, on the base's replies, the strength gives the budget
    from appliance.runtime.session import Runtime
    from appliance.training.evaluate import replies

    rt = Runtime(model, n_ctx=1024, sequences=1)
    try:
        neutral = [(t.prompt, t.reply) for t in replies(rt, NEUTRAL, None, 12)]
    finally:
        rt.close()
    assert abs(KLMeter(base, neutral).p95(vector.directions, vector.strength) - 0.5) <= 0.01
    save_control(vector, tmp_path / "cv")
    again = load_control_dir(tmp_path / "cv", base_sha256=model.sha256, hidden_size=576, n_layer=30)
    assert again.strength == vector.strength and again.provenance == vector.provenance


def test_cli_steer_writes_a_vector_and_refuses_bad_pairs(pairs_file, tmp_path, model):
    from helpers import appliance, error_line, ok

    neutral = tmp_path / "neutral.txt"
    neutral.write_text("\n".join(NEUTRAL[:2]) + "\n")
    out = ok("overlay", "steer", "--pairs", str(pairs_file), "--out", str(tmp_path / "cv"), "--layers", "11-12",
             "--neutral", str(neutral), "--max-tokens", "8", "--budget", "0.5")  # fmt: skip
    assert "strength" in out and "budget 0.5" in out
    vector = load_control_dir(tmp_path / "cv", base_sha256=model.sha256, hidden_size=576, n_layer=30)
    assert vector.layers == [11, 12]

    pairs_file.write_text(json.dumps({"positive": 1}) + "\n")
    r = appliance("overlay", "steer", "--pairs", str(pairs_file), "--out", str(tmp_path / "never"))
    error_line(r, 2, "dataset-rejected")
    assert not (tmp_path / "never").exists()
    r = appliance("overlay", "steer", "--pairs", str(pairs_file), "--out", str(tmp_path / "never"), "--layers", "x")
    assert r.returncode == 2


def test_cli_steer_on_an_overlay_reads_and_calibrates_on_it(pairs_file, tmp_path, model, runtime, base):
    """--overlay: the directions are the mean differences of the base with the overlay on (not the bare
    base's), the strength meets the budget against that model, and control.json names the overlay's files."""
    import hashlib

    from helpers import ok

    from appliance.overlay.files import Overlay, save_overlay
    from appliance.overlay.takens_torch import TakensLoRA
    from appliance.runtime.session import Runtime
    from appliance.training.adapter import TakensAdapter
    from appliance.training.evaluate import replies

    torch.manual_seed(0)
    module = TakensLoRA(576, 4, (0, 1, 2), 8.0, "tanh")
    with torch.no_grad():
        module.B.normal_(std=0.05)  # an overlay that moves the model everywhere
    save_overlay(Overlay(module.to_params(), model.sha256, {}), tmp_path / "ov")
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("\n".join(NEUTRAL[:2]) + "\n")
    ok("overlay", "steer", "--pairs", str(pairs_file), "--out", str(tmp_path / "cv"), "--layers", "12", "--overlay",
       str(tmp_path / "ov"), "--neutral", str(neutral), "--max-tokens", "8", "--budget", "0.5")  # fmt: skip
    vector = load_control_dir(tmp_path / "cv", base_sha256=model.sha256, hidden_size=576, n_layer=30)
    on = vector.provenance["read_on_overlay"]
    for name in ("overlay.json", "overlay.safetensors"):
        assert on[f"{name}_sha256"] == hashlib.sha256((tmp_path / "ov" / name).read_bytes()).hexdigest()

    adapter = TakensAdapter(base, module)
    forward = lambda ids: adapter.logits(torch.tensor(ids))  # noqa: E731
    tok = lambda messages: runtime.engine.tokenize(runtime.template.render(messages))  # noqa: E731
    contrast = [(tok(p.positive), tok(p.negative)) for p in load_pairs(pairs_file).pairs]
    with_overlay, bare = mean_differences(base, contrast, [12], forward), mean_differences(base, contrast, [12])
    np.testing.assert_allclose(vector.directions[12], with_overlay[12], rtol=1e-3, atol=1e-3)
    assert np.linalg.norm(vector.directions[12] - bare[12]) > 0.05 * np.linalg.norm(bare[12])

    rt = Runtime(model, n_ctx=1024, sequences=1)
    try:
        neutral_replies = [(t.prompt, t.reply) for t in replies(rt, NEUTRAL[:2], None, 8)]
    finally:
        rt.close()
    assert abs(KLMeter(base, neutral_replies, forward).p95(vector.directions, vector.strength) - 0.5) <= 0.01


def test_control_report_sweeps_strengths(base, model, tmp_path):
    from appliance.training.control_report import sweep

    rng = np.random.default_rng(1)
    vector = ControlVector({12: rng.standard_normal(576).astype(np.float32)}, 2.0, model.sha256)
    m = sweep(model, vector, NEUTRAL[:2], tmp_path / "r", multiples=(1.0, 8.0), max_tokens=12, sample_seeds=1, base=base)
    low, high = m["sweep"]
    assert (low["strength"], high["strength"]) == (2.0, 16.0)
    assert high["kl"]["p95"] > low["kl"]["p95"] > 0 and high["kl"]["max"] >= high["kl"]["p95"] >= 0
    for row in m["sweep"]:
        for loops in row["loop_rate"].values():
            assert 0 <= loops["on"] <= 1 and loops["more"] + loops["less"] + loops["same"] == 2
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "report.json", "sweep.png"}
    assert "| 8 | 16 |" in (tmp_path / "r" / "report.md").read_text()
