"""The behaviour score: 0 is the base, 1 is the base told by the positive system prompt, a steer toward the
concept scores above one away from it, and control-report shows it as a column."""

import json

import pytest
import torch

from appliance.overlay.control import ControlVector
from appliance.training.behaviour import make_probes, scale, score
from appliance.training.dataset import load_pairs
from appliance.training.steer import Steering, logits, mean_differences

TERSE = "You are a terse radio operator. Answer in clipped radio speech and end every answer with 'over'."
PLAIN = "You are a helpful assistant."
MADE_FROM = ["How do I boil an egg?", "Recommend a good book.", "How can I sleep better?"]
HELD_OUT = ["How do I clean a cast iron pan?", "How far away is the Sun?"]


def _pair(user: str) -> dict:
    return {
        "positive": [{"role": "system", "content": TERSE}, {"role": "user", "content": user}],
        "negative": [{"role": "system", "content": PLAIN}, {"role": "user", "content": user}],
    }


def _write(path, users):
    path.write_text("".join(json.dumps(_pair(u)) + "\n" for u in users))
    return path


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return load_pairs(_write(tmp_path_factory.mktemp("pairs") / "heldout.jsonl", HELD_OUT))


@pytest.fixture(scope="module")
def probes(runtime, heldout):
    return make_probes(runtime, heldout, max_tokens=12)


def test_the_base_scores_zero_and_the_base_told_scores_one(probes, smollm2_base):
    base = lambda ids: logits(smollm2_base, ids)  # noqa: E731
    unit = scale(base, probes)
    assert unit.told > unit.plain
    assert score(base, probes, unit) == pytest.approx(0.0, abs=1e-6)

    def told(ids: list[int]) -> torch.Tensor:
        """The base with the positive system prompt in front of the plain turn: what 1 stands for."""
        p = next(p for p in probes if ids[: len(p.plain)] == p.plain)
        return logits(smollm2_base, p.told + ids[len(p.plain) :])[len(p.told) - len(p.plain) :]

    assert score(told, probes, unit) == pytest.approx(1.0, abs=1e-4)


def test_a_steer_toward_the_concept_scores_above_one_away_from_it(probes, runtime, smollm2_base, tmp_path):
    made = load_pairs(_write(tmp_path / "pairs.jsonl", MADE_FROM))
    tok = lambda messages: runtime.engine.tokenize(runtime.template.render(messages))  # noqa: E731
    directions = mean_differences(smollm2_base, [(tok(p.positive), tok(p.negative)) for p in made.pairs], [15])
    unit = scale(lambda ids: logits(smollm2_base, ids), probes)

    def at(strength: float) -> float:
        steering = Steering(smollm2_base, directions, strength)
        return score(lambda ids: logits(smollm2_base, ids, steering), probes, unit)

    toward, away = at(0.7), at(-0.7)
    assert toward > 0.2 and away < toward


def test_control_report_adds_the_behaviour_column(heldout, model, smollm2_base, tmp_path):
    from appliance.training.control_report import sweep

    vector = ControlVector({15: torch.ones(576).numpy() * 0.05}, 1.0, model.sha256)
    m = sweep(model, vector, ["What is the capital of France?"], tmp_path / "r", multiples=(1.0,), max_tokens=8,
              sample_seeds=0, base=smollm2_base, heldout=heldout)  # fmt: skip
    assert m["heldout_pairs"] == 2 and isinstance(m["sweep"][0]["behaviour"], float)
    page = (tmp_path / "r" / "report.md").read_text()
    assert "| x strength | strength | behaviour |" in page
