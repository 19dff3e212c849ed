"""The control vector in our llama.cpp runtime: `llama_set_adapter_cvec` steers every position, clearing it gives
the base back bit for bit, and after any switch (control vector, overlay, both) the next greedy reply equals a fresh
session's in the new state."""

import numpy as np
import pytest

from appliance.errors import NoControlVector
from appliance.overlay.control import ControlVector
from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Runtime, Session

D = 576


def _control(model, seed=5, strength=4.0, layers=(8, 12, 16)) -> ControlVector:
    rng = np.random.default_rng(seed)
    return ControlVector({n: rng.standard_normal(D).astype(np.float32) for n in layers}, strength, model.sha256)


def _overlay(model):
    return Overlay(OverlayParams.random(D, seed=1, b_scale=0.2), model.sha256)


def _logits(runtime, tokens):
    runtime.engine.forget_from(0)
    runtime.engine.decode_tokens(tokens, 0)
    return runtime.engine.last_logits().copy()


def test_set_and_clear(runtime, model):
    runtime.decoder.reset()
    tokens = runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": "Hello there."}]))
    base = _logits(runtime, tokens)
    cv = _control(model)
    runtime.engine.set_control(cv.applied(runtime.engine.n_layer))
    steered = _logits(runtime, tokens)
    runtime.engine.set_control(None)
    again = _logits(runtime, tokens)
    runtime.decoder.reset()
    assert np.abs(steered - base).max() > 1.0
    np.testing.assert_array_equal(again, base)  # cleared: exactly the base, no trace of the vector


def test_a_shorter_vector_leaves_no_trace_of_a_longer_one(runtime, model):
    tokens = runtime.engine.tokenize("The radio crackled.")
    n_layer = runtime.engine.n_layer
    runtime.engine.set_control(_control(model, layers=(3,)).applied(n_layer))
    only = _logits(runtime, tokens)
    runtime.engine.set_control(_control(model, layers=(3, 20, n_layer - 1), seed=9).applied(n_layer))
    _logits(runtime, tokens)
    runtime.engine.set_control(_control(model, layers=(3,)).applied(n_layer))
    np.testing.assert_array_equal(_logits(runtime, tokens), only)
    runtime.decoder.reset()


def _fresh(model, history, prompt, overlay, control, max_tokens):
    """What a new process would answer in that state: its own runtime of one KV sequence, nothing cached."""
    rt = Runtime(model, n_ctx=2048, sequences=1)
    try:
        s = Session.switched_on(rt, overlay, control, history=list(history), settings=GREEDY)
        return s.generate(prompt, max_tokens=max_tokens)
    finally:
        rt.close()


def test_switches_mid_conversation_equal_fresh_sessions(runtime, model):
    runtime.decoder.reset()
    overlay, cv = _overlay(model), _control(model)
    s = Session(runtime, items={Overlay.KIND: overlay, ControlVector.KIND: cv}, settings=GREEDY)
    s.generate("Name three uses of a USB stick.", max_tokens=16)
    # (overlay, control) before each question: every kind of switch, and returns to states seen before
    states = [(False, True), (True, True), (False, True), (False, False), (True, False), (False, False), (True, True)]
    replies = []
    for n, (ov, ctl) in enumerate(states):
        history, q = list(s.history), f"Question {n}: which is the riskiest, and why?"
        s.set_on(Overlay.KIND, ov)
        s.set_on(ControlVector.KIND, ctl)
        reply = s.generate(q, max_tokens=16)
        fresh = _fresh(model, history, q, overlay if ov else None, cv if ctl else None, 16)
        assert reply.prompt == fresh.prompt and reply.tokens == fresh.tokens, (ov, ctl)
        assert (Overlay.KIND in reply.on, ControlVector.KIND in reply.on) == (ov, ctl)
        replies.append(reply)
    # Two sequences for four states: a return to a state a sequence still holds reads only what it has not
    # seen; a state no sequence holds evicts the least recently used one and reads everything.
    assert [r.prefill_tokens == r.prompt_tokens for r in replies] == [True, True, False, True, True, False, True]
    unsteered = _fresh(model, s.history[:2], "Question 0: which is the riskiest, and why?", None, None, 16)
    assert replies[0].tokens != unsteered.tokens, "the vector must matter here"


def test_toggling_the_vector_back_and_forth_reads_only_what_is_new(runtime, model):
    runtime.decoder.reset()
    cv = _control(model)
    s = Session(runtime, items={ControlVector.KIND: cv}, settings=GREEDY)
    first = s.generate("Name three uses of a USB stick.", max_tokens=16)
    prefilled = {False: first.prompt}  # vector on? -> the context its sequence's last prefill computed
    for n in range(4):
        history, q = list(s.history), f"Question {n}: and then?"
        on = s.toggle(ControlVector.KIND)
        reply = s.generate(q, max_tokens=16)
        assert reply.tokens == _fresh(model, history, q, None, cv if on else None, 16).tokens, on
        held = prefilled.get(on, [])
        assert reply.prompt[: len(held)] == held
        # the first time on reads everything; after that, the state's last reply and the exchanges since
        assert reply.prefill_tokens == reply.prompt_tokens - len(held)
        prefilled[on] = reply.prompt


def test_switching_on_without_a_vector_is_not_found(runtime):
    s = Session(runtime)
    with pytest.raises(NoControlVector) as e:
        s.set_on(ControlVector.KIND, True)
    assert e.value.exit_code == 5 and not s.is_on(ControlVector.KIND)
