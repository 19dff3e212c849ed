"""The overlay maths: incremental == whole-sequence, numpy == torch, at every position."""

import numpy as np
import pytest
import torch

from appliance.overlay.params import ACTIVATIONS, OverlayParams
from appliance.overlay.takens_numpy import OverlayStream, apply_sequence
from appliance.overlay.takens_torch import TakensLoRA

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

D, T = 64, 40


def _case(activation: str, delays=(0, 1, 2, 4, 8), seed=3):
    p = OverlayParams.random(D, rank=6, delays=delays, alpha=4.0, activation=activation, seed=seed, b_scale=0.5)
    E = np.random.default_rng(seed + 1).standard_normal((T, D)).astype(np.float32)
    return p, E


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("delays", [(0, 1, 2, 4, 8), (0,), (0, 3, 50)])
def test_incremental_equals_whole_sequence_numpy(activation, delays):
    p, E = _case(activation, delays)
    whole = apply_sequence(p, E)
    stream = OverlayStream(p)
    incremental = np.concatenate([stream.steps(E[t : t + 1]) for t in range(T)])
    np.testing.assert_allclose(incremental, whole, atol=1e-5, rtol=0)
    assert not np.allclose(whole, E), "the test overlay must actually change the embeddings"


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("delays", [(0, 1, 2, 4, 8), (0,), (0, 3, 50)])
def test_the_stream_gives_the_same_bits_however_the_embeddings_are_split(activation, delays):
    """What the decoder relies on: a prefill then steps, or prefills cut anywhere, feed llama.cpp one whole
    prefill's inputs. At the embedded model's width, where a matrix product over the rows rounds otherwise."""
    p = OverlayParams.random(576, delays=delays, activation=activation, seed=5, b_scale=0.5)
    E = np.random.default_rng(6).standard_normal((300, 576)).astype(np.float32)
    whole = OverlayStream(p).steps(E)
    for cuts in ([1] * 300, [2, 1, 97, 1, 199], [150, 150]):
        stream, at, parts = OverlayStream(p), 0, []
        for n in cuts:
            parts.append(stream.steps(E[at : at + n]))
            at += n
        assert np.array_equal(np.concatenate(parts).view(np.uint32), whole.view(np.uint32)), cuts
    resumed = OverlayStream(p)
    resumed.resume(E[:120], 120)
    assert np.array_equal(resumed.steps(E[120:]).view(np.uint32), whole[120:].view(np.uint32))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_numpy_equals_torch_whole_and_incremental(activation):
    p, E = _case(activation)
    module = TakensLoRA.from_params(p)
    with torch.no_grad():
        whole_t = module(torch.from_numpy(E)[None])[0].numpy()  # (T, d)
        ring = module.new_ring(1)
        inc_t = np.stack([module.step(torch.from_numpy(E[t])[None], ring, t)[0].numpy() for t in range(T)])
    whole_np = apply_sequence(p, E)
    np.testing.assert_allclose(whole_t, whole_np, atol=1e-5, rtol=0)
    np.testing.assert_allclose(inc_t, whole_np, atol=1e-5, rtol=0)


def test_stream_resume_continues_exactly():
    """Rewinding the cache to position k and resuming from the tokens before it gives the same outputs."""
    p, E = _case("tanh")
    whole = apply_sequence(p, E)
    for k in (1, 5, 8, 9, 23):
        stream = OverlayStream(p)
        stream.resume(E[:k], k)
        np.testing.assert_allclose(stream.steps(E[k:]), whole[k:], atol=1e-5, rtol=0)


def test_zero_B_is_the_identity():
    p = OverlayParams.random(D, b_scale=0.0)
    E = np.random.default_rng(0).standard_normal((T, D)).astype(np.float32)
    assert np.array_equal(apply_sequence(p, E), E)


def test_params_round_trip_through_torch():
    p, _ = _case("silu")
    q = TakensLoRA.from_params(p).to_params()
    for name in "AWB":
        assert np.array_equal(getattr(p, name), getattr(q, name))
    assert (q.delays, q.alpha, q.activation) == (p.delays, p.alpha, p.activation)
