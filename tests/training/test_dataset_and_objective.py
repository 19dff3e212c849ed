"""Dataset validation (with line numbers) and the objective's aggregates and barrier, by hand."""

import json
import math

import pytest
import torch

from appliance.training.dataset import DatasetError, load_dataset
from appliance.training.objective import aggregate, barrier, per_position_kl

GOOD = [{"role": "user", "content": "Status?"}, {"role": "assistant", "content": "Unknown. Will not guess."}]


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines) + b"\n")
    return path


def test_good_dataset_loads_with_its_hash(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD])
    ds = load_dataset(path)
    assert len(ds.conversations) == 2
    import hashlib

    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "bad,words",
    [
        (b'{"role": "user"', ["not valid UTF-8 JSON"]),
        (b"\xff\xfe", ["UTF-8"]),
        ([{"role": "pilot", "content": "x"}, {"role": "assistant", "content": "y"}], ["unknown role", "pilot"]),
        ([], ["non-empty list"]),
        ([{"role": "user", "content": "only a question"}], ["no assistant turn"]),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], ["content must be a string"]),
        ([{"role": "user", "content": "x", "extra": 1}, {"role": "assistant", "content": "y"}], ["exactly"]),
        (
            [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "y"}],
            ["only come first"],
        ),
    ],
)
def test_each_fault_is_reported_with_its_line_number(tmp_path, bad, words):
    path = _write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    assert f"{path}:3:" in str(e.value)
    for w in words:
        assert w in str(e.value)
    assert e.value.exit_code == 2


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DatasetError, match="no conversations"):
        load_dataset(path)


def test_kl_matches_a_hand_computation():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    kl = per_position_kl(p.log()[None], q.log()[None])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert kl.item() == pytest.approx(expected, abs=1e-6)
    assert per_position_kl(p.log()[None], p.log()[None]).item() == pytest.approx(0.0, abs=1e-7)


def test_aggregates_by_hand():
    kl = torch.tensor([0.0, 0.0, 0.0, 4.0])  # one spike among calm positions
    assert aggregate(kl, "mean").item() == pytest.approx(1.0)
    assert aggregate(kl, "rmse").item() == pytest.approx(2.0)  # sqrt(16 / 4)
    assert aggregate(kl, "max").item() == pytest.approx(4.0)
    # torch.quantile interpolates linearly: position 0.95 * 3 = 2.85 between 0 and 4.
    assert aggregate(kl, "p95").item() == pytest.approx(0.85 * 4.0)
    with pytest.raises(ValueError):
        aggregate(kl, "median")


def test_rmse_fires_where_mean_dilutes():
    """docs/overlay-training.md: a short loop in a long reply stays under tau by the mean, not by the rmse."""
    kl = torch.zeros(60)
    kl[:4] = 5.8
    assert barrier(aggregate(kl, "mean"), 0.5).item() == 0.0
    assert barrier(aggregate(kl, "rmse"), 0.5).item() > 0.9


def test_barrier_is_zero_below_tau_and_grows_above():
    values = [barrier(torch.tensor(v), 0.5).item() for v in (0.0, 0.3, 0.5, 0.7, 1.5)]
    assert values[:3] == [0.0, 0.0, 0.0]
    assert values[3] == pytest.approx(0.2) and values[4] == pytest.approx(1.0)
