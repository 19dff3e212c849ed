"""The sampler's filters, in isolation."""

import numpy as np
import pytest

from appliance.runtime.sampler import GREEDY, Sampler, SamplingSettings, penalise
from tests.helpers import llama_cpp_penalised

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(GREEDY)(logits, []) == 1


def test_repetition_penalty_can_flip_greedy():
    logits = np.array([0.0, 3.0, 2.9], np.float32)
    penalised = Sampler(SamplingSettings(temperature=0.0, repeat_penalty=1.5))
    assert penalised(logits, [1]) == 2
    assert penalised(logits, [0]) == 1  # unseen best token keeps its place
    assert logits[1] == 3.0  # the caller's logits are not modified


def test_top_k_only_draws_from_the_k_best():
    logits = np.log(np.array([0.3, 0.3, 0.2, 0.2], np.float32))
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=2, top_p=1.0, repeat_penalty=1.0, seed=5))
    draws = {sampler(logits, []) for _ in range(200)}
    assert draws == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.6, 0.25, 0.1, 0.05], np.float32))
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=0.8, repeat_penalty=1.0, seed=1))
    draws = [sampler(logits, []) for _ in range(400)]
    assert set(draws) == {0, 1}
    assert 0.6 < draws.count(0) / len(draws) < 0.85  # renormalised: 0.6 / 0.85


def test_seeded_sampler_repeats():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    s = SamplingSettings(temperature=1.0, seed=9)
    a, b = Sampler(s), Sampler(s)
    assert [a(logits, []) for _ in range(20)] == [b(logits, []) for _ in range(20)]


def test_the_penalty_leaves_the_row_llama_cpps_penalties_stage_leaves_bit_for_bit():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(1000) * 4).astype(np.float32)
    accepted = [int(t) for t in rng.integers(0, 600, 40)] + [7, 3, 4, 7, 5, 3]  # repeats, and more than the window
    last_n, penalty = 16, 1.3
    want = llama_cpp_penalised(logits, accepted, last_n, penalty)
    ours = logits.copy()
    penalise(ours, accepted[-last_n:], np.float32(penalty))
    assert np.array_equal(ours.view(np.uint32), want.view(np.uint32))
    # What the comparison can tell apart: a window one longer, and CTRL's plain division.
    wider = logits.copy()
    penalise(wider, accepted[-last_n - 1 :], np.float32(penalty))
    assert not np.array_equal(wider, want)
    seen = np.unique(accepted[-last_n:])
    assert not np.array_equal(logits[seen] / np.float32(penalty), want[seen])
