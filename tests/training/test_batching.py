"""Batches on the real base: conversations side by side compute what each computes alone, and the base is cached once."""

import pytest
import torch
from torch.nn import functional as F

from appliance.overlay.params import OverlayParams
from appliance.overlay.takens_torch import TakensLoRA
from appliance.training.adapter import TakensAdapter
from appliance.training.batching import Batch, Example, base_logprobs
from appliance.training.choices import TrainConfig
from appliance.training.examples import encode
from appliance.training.objective import aggregate, kl_of_logprobs
from appliance.training.terms import batch_terms, heldout_nll, step_terms

CONVERSATIONS = [
    [{"role": "user", "content": "Is the relay up?"}, {"role": "assistant", "content": "Unknown. Check the log."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How do I splint a suspected broken arm?"},
        {"role": "assistant", "content": "1. Do not straighten it. 2. Pad the splint. 3. Immobilise the joints."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Movement worsens the break."},
    ],
    [{"role": "user", "content": "Will it rain at the ridge tonight?"}, {"role": "assistant", "content": "Unknown."}],
]


@pytest.fixture(scope="module")
def examples(runtime):
    return [encode(runtime, conv, 96) for conv in CONVERSATIONS]


@pytest.fixture(scope="module")
def moved(smollm2_base):
    """An overlay far enough from the identity that every position's KL is well above zero."""
    return TakensAdapter(smollm2_base, TakensLoRA.from_params(OverlayParams.random(576, seed=5, b_scale=0.2)))


def test_a_padded_batch_gives_each_conversation_the_loss_it_has_alone(moved, examples):
    assert len({len(ex.ids) for ex in examples}) == 3  # different lengths: two rows carry padding
    agg = "rmse"
    with torch.no_grad():
        alone = [step_terms(moved, ex, TrainConfig()) for ex in examples]
        batch = Batch.of(examples, "cpu")
        terms = batch_terms(moved, batch, torch.cat(base_logprobs(moved, examples, torch.float32)), agg, n_domain=3)
    for i, (nll_alone, kl_alone) in enumerate(alone):
        assert terms.nll[i].item() == pytest.approx(nll_alone.item(), rel=1e-4)
        assert terms.divergence[i].item() == pytest.approx(aggregate(kl_alone, agg).item(), rel=1e-4)
        assert aggregate(kl_alone, agg).item() > 0.05


def test_the_delay_ring_never_reaches_into_the_next_conversation(moved, examples):
    """Whatever sits before a conversation in a row or beside it in the batch, its overlay output is its own."""
    module = moved.module
    embed = moved.base.get_input_embeddings()
    batch = Batch.of(examples, "cpu")
    with torch.no_grad():
        together = module(embed(batch.ids))
        for i, ex in enumerate(examples):
            assert torch.allclose(together[i, : len(ex.ids)], module(embed(ex.ids[None]))[0], atol=1e-6)


def test_the_cache_holds_the_reference_pass_and_float16_costs_the_kl_little(moved, examples):
    cached32 = base_logprobs(moved, examples, torch.float32)
    cached16 = base_logprobs(moved, examples, torch.float16)
    with torch.no_grad():
        for ex, logp32, logp16 in zip(examples, cached32, cached16):
            predicts = ex.target[1:]
            reference = F.log_softmax(moved.reference(ex.ids)[:-1][predicts], dim=-1)
            assert torch.allclose(logp32, reference, atol=1e-5)
            logp_on = F.log_softmax(moved.logits(ex.ids)[:-1][predicts], dim=-1)
            kl32, kl16 = kl_of_logprobs(logp_on, logp32), kl_of_logprobs(logp_on, logp16)
            # docs/overlay-training.md: the float16 cache's KL error, per position
            assert (kl16 - kl32).abs().max().item() < 2e-3


def test_the_batched_held_out_nll_is_the_mean_of_each_conversations(moved, examples):
    cfg = TrainConfig()
    one_by_one = [step_terms(moved, ex, cfg)[0].item() for ex in examples]
    assert heldout_nll(moved, examples, cfg) == pytest.approx(sum(one_by_one) / 3, rel=1e-4)


def test_a_batch_of_two_pays_the_mean_of_their_losses(smollm2_base, examples):
    """The loss of a batch of two, and its gradient, are the mean of the two conversations' own."""
    from appliance.training.batching import BaseCache, Schedule
    from appliance.training.distributed import Ranks
    from appliance.training.terms import step_loss

    cfg = TrainConfig(tau=0.0, lam=1.0, batch=2)
    adapter = TakensAdapter(smollm2_base, TakensLoRA.from_params(OverlayParams.random(576, seed=6, b_scale=0.05)))
    sched = Schedule(2, 0, 2, Ranks())
    loss, _ = step_loss(
        adapter, cfg, sched, 0, examples[:2], [], BaseCache(adapter, sched, range(1), examples[:2], [], torch.float32)
    )
    loss.backward()
    batched = [p.grad.clone() for p in adapter.module.parameters()]
    adapter.module.zero_grad()
    by_hand = sum(
        (nll + cfg.lam * aggregate(kl, cfg.agg)) / 2 for nll, kl in (step_terms(adapter, ex, cfg) for ex in examples[:2])
    )
    by_hand.backward()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    for g, p in zip(batched, adapter.module.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-3, atol=1e-5), (g - p.grad).abs().max()


def test_steps_read_the_conversations_in_one_fixed_order_whatever_the_batch():
    """Batch 1 for two steps and batch 2 for one step read the same two conversations; a process reads its share."""
    from appliance.training.batching import Schedule
    from appliance.training.distributed import Ranks

    assert [Schedule(3, 0, 1, Ranks()).domain(s) for s in range(4)] == [[0], [1], [2], [0]]
    assert [Schedule(3, 2, 2, Ranks()).domain(s) for s in range(2)] == [[0, 1], [2, 0]]
    assert Schedule(3, 2, 2, Ranks()).preserve(1) == [0, 1]
    assert Schedule(4, 0, 4, Ranks(1, 2)).domain(0) == [1, 3]  # process 1 of 2: its round-robin share


def test_a_batch_pads_each_row_and_lists_its_predicting_positions():
    ex = Example(torch.tensor([5, 6, 7]), torch.tensor([False, False, True]))
    batch = Batch.of([ex, Example(torch.tensor([1, 2]), torch.tensor([False, True]))], "cpu", pad_to=8)
    assert batch.ids.shape == (2, 8)
    assert batch.rows.tolist() == [0, 1] and batch.cols.tolist() == [1, 0] and batch.targets.tolist() == [7, 2]
