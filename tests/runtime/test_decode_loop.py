"""Our llama.cpp decode loop on the real embedded model."""

import numpy as np
import pytest

from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.overlay.takens_numpy import apply_sequence
from appliance.runtime.llama import reference_llama
from appliance.runtime.sampler import GREEDY, SamplingSettings
from appliance.runtime.session import Runtime, Session

PROMPT = "What is an air gap, in one paragraph?"


def _overlay(model, seed=1, b_scale=0.05):
    return Overlay(OverlayParams.random(576, seed=seed, b_scale=b_scale), model.sha256)


def _prompt_tokens(runtime, history):
    return runtime.engine.tokenize(runtime.template.render(history))


def test_zero_B_overlay_logits_bit_identical_to_token_path(runtime):
    engine = runtime.engine
    tokens = _prompt_tokens(runtime, [{"role": "user", "content": PROMPT}])
    zero = OverlayParams.random(engine.n_embd, b_scale=0.0)

    engine.forget_from(0)
    engine.decode_tokens(tokens, 0)
    by_id = [engine.last_logits().copy()]
    engine.decode_tokens([42], len(tokens))
    by_id.append(engine.last_logits().copy())

    engine.forget_from(0)
    E = runtime.embeddings.rows(tokens + [42])
    engine.decode_embeddings(apply_sequence(zero, E)[:-1], 0)
    by_embd = [engine.last_logits().copy()]
    engine.decode_embeddings(apply_sequence(zero, E)[-1:], len(tokens))
    by_embd.append(engine.last_logits().copy())
    runtime.decoder.reset()  # we bypassed the decoder: the cache is no longer what it thinks

    for a, b in zip(by_id, by_embd):
        assert np.array_equal(a, b), f"max |diff| = {np.abs(a - b).max()}"


def test_greedy_reply_token_identical_to_llama_cpp_python(runtime, model):
    session = Session(runtime, settings=GREEDY)
    ours = session.generate(PROMPT, max_tokens=48)
    tokens = _prompt_tokens(runtime, [{"role": "user", "content": PROMPT}])
    reference = reference_llama(model.path, n_ctx=runtime.engine.n_ctx, n_threads=runtime.engine.n_threads)
    theirs = reference.create_completion(tokens, max_tokens=48, temperature=0.0, repeat_penalty=1.0)
    theirs_tokens = reference.tokenize(theirs["choices"][0]["text"].encode(), add_bos=False, special=True)
    assert ours.text == theirs["choices"][0]["text"]
    assert ours.tokens == theirs_tokens
    assert len(ours.tokens) == 48


def test_random_overlay_changes_the_reply(runtime, model):
    base = Session(runtime, settings=GREEDY).generate(PROMPT, max_tokens=32)
    on = Session(runtime, overlay=_overlay(model), overlay_on=True, settings=GREEDY).generate(PROMPT, max_tokens=32)
    assert on.overlay_on and not base.overlay_on
    assert on.tokens != base.tokens


def _fresh_reply(model, history, prompt, overlay=None):
    """What a new process would answer: its own runtime, nothing cached."""
    rt = Runtime(model, n_ctx=2048)
    try:
        s = Session(rt, overlay=overlay, overlay_on=overlay is not None, history=list(history), settings=GREEDY)
        return s.generate(prompt, max_tokens=24)
    finally:
        rt.close()


def test_toggle_mid_conversation_equals_fresh_sessions(runtime, model):
    overlay = _overlay(model, b_scale=0.2)
    s = Session(runtime, overlay=overlay, overlay_on=True, settings=GREEDY)
    s.generate("Name three uses of a USB stick.", max_tokens=24)
    history = list(s.history)

    assert s.toggle() is False  # off mid-conversation
    off_reply = s.generate("And which is the riskiest?", max_tokens=24)
    assert off_reply.prefill_tokens == off_reply.prompt_tokens, "a toggle must recompute the whole context"
    assert _fresh_reply(model, history, "And which is the riskiest?").tokens == off_reply.tokens

    history = list(s.history)
    assert s.toggle() is True  # and back on
    on_reply = s.generate("Why?", max_tokens=24)
    assert _fresh_reply(model, history, "Why?", overlay).tokens == on_reply.tokens
    assert _fresh_reply(model, history, "Why?").tokens != on_reply.tokens, "the overlay must matter here"


def test_toggle_without_overlay_is_not_found(runtime):
    from appliance.errors import NoOverlay

    s = Session(runtime)
    with pytest.raises(NoOverlay):
        s.toggle()
    assert s.overlay_on is False


def test_cache_reuse_keeps_the_prefix(runtime):
    s = Session(runtime, settings=GREEDY)
    s.generate("Hello!", max_tokens=8)
    second = s.generate("Tell me more.", max_tokens=8)
    assert second.prefill_tokens < second.prompt_tokens / 2, "the earlier turns should come from the cache"


def test_same_seed_same_text_different_seeds_differ(runtime):
    def sample(seed):
        settings = SamplingSettings(temperature=1.0, seed=seed)
        return Session(runtime, settings=settings).generate("Write a short poem about a locked door.", max_tokens=24).text

    assert sample(11) == sample(11)
    texts = {sample(seed) for seed in (1, 2, 3, 4)}
    assert len(texts) >= 3


def test_context_window_drops_oldest_turns_keeps_system(model):
    small = Runtime(model, n_ctx=256)
    try:
        s = Session(small, system_prompt="You are terse. SYSTEM-MARKER.", settings=GREEDY)
        long_turn = "Please remember this sentence about field radios and batteries. " * 4
        dropped = 0
        for _ in range(6):
            reply = s.generate(long_turn, max_tokens=16)
            dropped += reply.dropped_turns
        assert dropped > 0
        assert reply.prompt_tokens <= 256 - 16
        seen = s.messages()
        assert seen[0] == {"role": "system", "content": "You are terse. SYSTEM-MARKER."}
        assert len(s.history) == 12, "the full history is kept for the journal; only the window shrinks"
    finally:
        small.close()


def test_prompt_too_long_for_window_is_refused_and_history_unchanged(model):
    from appliance.errors import ContextOverflow

    small = Runtime(model, n_ctx=128)
    try:
        s = Session(small, settings=GREEDY)
        s.generate("Hi", max_tokens=4)
        before = list(s.history)
        with pytest.raises(ContextOverflow) as e:
            s.generate("word " * 400, max_tokens=4)
        assert e.value.exit_code == 2
        assert s.history == before
    finally:
        small.close()


def test_cancel_stops_generation_early(runtime):
    import threading

    cancel = threading.Event()
    seen = []

    def on_text(piece):
        seen.append(piece)
        if len(seen) == 5:
            cancel.set()

    reply = Session(runtime, settings=GREEDY).generate(
        "Write a long essay about field radios.", max_tokens=200, on_text=on_text, cancel=cancel
    )
    assert reply.finish == "cancelled"
    assert len(reply.tokens) <= 6
