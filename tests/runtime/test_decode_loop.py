"""Our llama.cpp decode loop on the real embedded model."""

from dataclasses import replace

import llama_cpp as C
import numpy as np
import pytest

from appliance.overlay.files import Overlay
from appliance.overlay.params import OverlayParams
from appliance.overlay.takens_numpy import apply_sequence
from appliance.runtime.llama import LlamaEngine, SamplerChain, reference_llama
from appliance.runtime.sampler import GREEDY, NativeSampler, Sampler, SamplingSettings
from appliance.runtime.session import Runtime, Session
from tests.helpers import llama_cpp_penalised

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


def test_batches_of_two_or_more_give_the_logits_of_one_whole_prefill(runtime, model):
    """The same tokens, fed in random batches of two or more on either sequence with 1 or 2 threads, give
    the logits of one whole prefill in a one-sequence context, bit for bit, at every batch's end (token and
    embedding path). What the decoder reuses, and the thread governor's freedom, rest on this."""
    rng = np.random.default_rng(3)
    tokens = [int(t) for t in rng.integers(100, 40000, 700)]
    E = runtime.embeddings.rows(tokens)
    single = LlamaEngine(model.path, n_ctx=1024, n_threads=2)
    engine = LlamaEngine(model.path, n_ctx=1024, n_threads=2, sequences=2)
    try:
        for feed in ("decode_tokens", "decode_embeddings"):
            data = tokens if feed == "decode_tokens" else E
            want, ends, pos = {}, [], 0
            while pos < len(tokens):
                n = min(int(rng.choice([2, 3, 40, 300, 600])), len(tokens) - pos)
                n += 1 if len(tokens) - pos - n == 1 else 0
                ends.append(pos + n)
                pos += n
            for end in ends[-3:]:
                single.forget_all()
                getattr(single, feed)(data[:end], 0)
                want[end] = single.last_logits().copy()
            for seq in (0, 1):
                start = 0
                for end in ends:
                    engine.set_threads(int(rng.integers(1, 3)))
                    getattr(engine, feed)(data[start:end], start, seq=seq)
                    if end in want:
                        assert np.array_equal(engine.last_logits(), want[end]), f"{feed}, sequence {seq}, position {end}"
                    start = end
            engine.forget_all()
    finally:
        engine.close()
        single.close()


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
    on = Session.switched_on(runtime, _overlay(model), settings=GREEDY).generate(PROMPT, max_tokens=32)
    assert on.on == {Overlay.KIND} and not base.on
    assert on.tokens != base.tokens


def _fresh_reply(model, history, prompt, overlay=None, n_ctx=2048, max_tokens=24, system_prompt=None):
    """What a new process would answer: its own runtime of one KV sequence, nothing cached."""
    rt = Runtime(model, n_ctx=n_ctx, sequences=1)
    try:
        s = Session.switched_on(rt, overlay, history=list(history), settings=GREEDY, system_prompt=system_prompt)
        return s.generate(prompt, max_tokens=max_tokens)
    finally:
        rt.close()


def _switch_and_check(model, s, first, questions, overlay, n_ctx=2048, max_tokens=24, switch=True):
    """Toggle before each question; each reply must equal a fresh session's, and compute only the positions
    its state's sequence has not computed by a prefill yet: its last reply (decoded one token at a time) and
    everything after. `first` is the reply made before; returns the replies."""
    prefilled = {Overlay.KIND in first.on: first.prompt}  # overlay state -> the context its last prefill computed
    replies = []
    for q in questions:
        history = list(s.history)
        on = s.toggle(Overlay.KIND) if switch else s.is_on(Overlay.KIND)
        reply = s.generate(q, max_tokens=max_tokens)
        fresh = _fresh_reply(model, history, q, overlay if on else None, n_ctx, max_tokens, s.system_prompt)
        assert reply.prompt == fresh.prompt and reply.tokens == fresh.tokens, f"{'on' if on else 'off'}, before {q!r}"
        held = prefilled.get(on, [])
        common = next((i for i, (a, b) in enumerate(zip(held, reply.prompt)) if a != b), min(len(held), len(reply.prompt)))
        assert reply.prefill_tokens == reply.prompt_tokens - min(common, reply.prompt_tokens - 2)
        prefilled[on] = reply.prompt
        replies.append(reply)
    return replies


def test_toggle_mid_conversation_equals_fresh_sessions(runtime, model):
    overlay = _overlay(model, b_scale=0.2)
    runtime.decoder.reset()
    s = Session.switched_on(runtime, overlay, settings=GREEDY)
    first = s.generate("Name three uses of a USB stick.", max_tokens=24)
    assert first.prefill_tokens == first.prompt_tokens

    questions = ["And which is the riskiest?", "Why?", "How would you check one?", "What about a CD?", "Summarise."]
    replies = _switch_and_check(model, s, first, questions, overlay)
    off_first, on_back = replies[0], replies[1]
    assert off_first.prefill_tokens == off_first.prompt_tokens, "the off sequence had seen nothing yet"
    assert on_back.prefill_tokens == on_back.prompt_tokens - first.prompt_tokens, (
        "the return reads its last reply and what came after"
    )
    assert [Overlay.KIND in r.on for r in replies] == [False, True, False, True, False]
    assert _fresh_reply(model, s.history[:4], "Why?").tokens != on_back.tokens, "the overlay must matter here"


def test_switches_stay_exact_when_the_window_drops_old_exchanges(model):
    small = Runtime(model, n_ctx=256)
    try:
        overlay = _overlay(model, b_scale=0.2)
        s = Session.switched_on(small, overlay, system_prompt="You are terse.", settings=GREEDY)
        first = s.generate("Tell me about field radios and their batteries, briefly.", max_tokens=16)
        questions = [f"Question {i}: what should a radio operator check on day {i}?" for i in range(1, 7)]
        replies = _switch_and_check(model, s, first, questions, overlay, n_ctx=256, max_tokens=16)
        assert sum(r.dropped_turns for r in replies) > 0, "the window must have dropped exchanges"
        assert s.first_turn > 0 and len(s.history) == 14
    finally:
        small.close()


def test_one_sequence_runtime_recomputes_at_each_switch(model):
    single = Runtime(model, n_ctx=1024, sequences=1)
    try:
        s = Session(single, items={Overlay.KIND: _overlay(model)}, settings=GREEDY)
        s.generate("Hello!", max_tokens=8)
        s.toggle(Overlay.KIND)
        on = s.generate("Tell me more.", max_tokens=8)
        s.toggle(Overlay.KIND)
        off = s.generate("And more.", max_tokens=8)
        assert on.prefill_tokens == on.prompt_tokens and off.prefill_tokens == off.prompt_tokens
    finally:
        single.close()


def test_reset_empties_both_sequences(runtime, model):
    s = Session(runtime, items={Overlay.KIND: _overlay(model)}, settings=GREEDY)
    s.generate("Hello!", max_tokens=8)
    s.toggle(Overlay.KIND)
    s.generate("Tell me more.", max_tokens=8)
    runtime.decoder.reset()
    assert all(seq.tokens == [] for seq in runtime.decoder.sequences)
    for _ in range(2):
        s.toggle(Overlay.KIND)
        reply = s.generate("Again.", max_tokens=8)
        assert reply.prefill_tokens == reply.prompt_tokens


def test_another_overlay_object_reads_everything_again(runtime, model):
    s = Session.switched_on(runtime, _overlay(model, seed=1, b_scale=0.2), settings=GREEDY)
    s.generate("Name three uses of a USB stick.", max_tokens=16)
    history = list(s.history)
    s.items[Overlay.KIND] = _overlay(model, seed=2, b_scale=0.2)  # a newly installed overlay: nothing computed with it is kept
    reply = s.generate("Which is the riskiest?", max_tokens=16)
    assert reply.prefill_tokens == reply.prompt_tokens
    assert reply.tokens == _fresh_reply(model, history, "Which is the riskiest?", s.items[Overlay.KIND], max_tokens=16).tokens


def test_a_long_prefill_never_ends_on_a_batch_of_one():
    from appliance.runtime.llama import _chunks

    assert _chunks(513, 512) == [(0, 511), (511, 513)]
    assert _chunks(1024, 512) == [(0, 512), (512, 1024)]
    assert _chunks(1, 512) == [(0, 1)]
    assert all(j - i >= 2 for n in range(2, 1600) for i, j in _chunks(n, 512))


def test_toggle_without_overlay_is_not_found(runtime):
    from appliance.errors import NoOverlay

    s = Session(runtime)
    with pytest.raises(NoOverlay):
        s.toggle(Overlay.KIND)
    assert not s.is_on(Overlay.KIND)


def test_turns_without_a_switch_reuse_the_prefix_and_equal_fresh_sessions(runtime, model):
    # A system prompt, so that the turns before the newest are most of the context, as in a real chat.
    s = Session(runtime, settings=GREEDY, system_prompt="You are the assistant of an air-gapped appliance. Answer plainly.")
    first = s.generate("Hello!", max_tokens=8)
    replies = _switch_and_check(model, s, first, ["Tell me more.", "And then?"], None, max_tokens=8, switch=False)
    assert all(r.prefill_tokens < r.prompt_tokens / 2 for r in replies), "the earlier turns should come from the cache"


def test_same_seed_same_text_different_seeds_differ(runtime):
    def sample(seed):
        settings = SamplingSettings(temperature=1.0, seed=seed)
        return Session(runtime, settings=settings).generate("Write a short poem about a locked door.", max_tokens=24).text

    assert sample(11) == sample(11)
    texts = {sample(seed) for seed in (1, 2, 3, 4)}
    assert len(texts) >= 3


def test_native_greedy_with_penalty_picks_what_the_numpy_sampler_picks(runtime):
    """llama.cpp's chain (what a reply uses) against our numpy stages over the same logits, token for token."""
    settings = SamplingSettings(temperature=0.0, repeat_penalty=1.3, repeat_last_n=16)
    native = Session(runtime, settings=settings).generate(PROMPT, max_tokens=40)
    prompt = _prompt_tokens(runtime, [{"role": "user", "content": PROMPT}])
    sampler, context, ours = Sampler(settings), list(prompt), []
    logits = runtime.decoder.prefill(prompt)
    while len(ours) < 40:
        token = sampler(logits, context)
        if runtime.engine.is_end_of_generation(token):
            break
        context.append(token)
        ours.append(token)
        logits = runtime.decoder.step(token)
    assert native.tokens == ours
    assert native.tokens != Session(runtime, settings=GREEDY).generate(PROMPT, max_tokens=40).tokens, (
        "the penalty must matter here"
    )


class LlamaCppChain(SamplerChain):
    """With llama.cpp's own stages that a reply does not run (the sampler computes them on the row): the yardstick."""

    def penalties(self, last_n: int, repeat: float) -> "LlamaCppChain":
        return self._add(C.llama_sampler_init_penalties(self._engine.n_vocab, last_n, repeat, 0.0, 0.0))

    def greedy(self) -> "LlamaCppChain":
        return self._add(C.llama_sampler_init_greedy())

    def accept(self, tokens: list[int]) -> None:
        for t in tokens:
            C.llama_sampler_accept(self._chain, t)


def _llama_cpp_chain(engine, s: SamplingSettings, context: list[int]) -> SamplerChain:
    """The chain with llama.cpp's own penalties stage, its window filled with the prompt as a reply's is."""
    chain = LlamaCppChain(engine).penalties(s.repeat_last_n, s.repeat_penalty)
    chain.accept(context[-s.repeat_last_n :])
    if s.temperature <= 0.0:
        return chain.greedy()
    return chain.temperature(s.temperature).top_k(s.top_k).top_p(s.top_p).draw(s.seed)


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(seed=3),  # the chat's default: the prompt leaves the window of 64 half-way
        SamplingSettings(temperature=0.0, repeat_penalty=1.5, repeat_last_n=8),  # tokens leave the window often
    ],
)
def test_the_penalty_on_the_tokens_seen_picks_what_llama_cpps_penalties_stage_picks(runtime, settings):
    """Token for token over a long reply, the same seed: the same window (the prompt's last tokens, then each one
    sampled), the same rule. Both chains read the row before NativeSampler penalises it in place."""
    engine = runtime.engine
    prompt = _prompt_tokens(runtime, [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}])
    ours, theirs = NativeSampler(engine, settings, prompt), _llama_cpp_chain(engine, settings, prompt)
    unpenalised = NativeSampler(engine, replace(settings, repeat_penalty=1.0), prompt)  # never changes the row
    picks: dict[str, list[int]] = {"theirs": [], "unpenalised": [], "ours": []}
    runtime.decoder.reset()
    runtime.decoder.prefill(prompt)
    try:
        for _ in range(128):
            raw = engine.last_logits().copy()
            picks["theirs"].append(theirs.sample())
            picks["unpenalised"].append(unpenalised())
            picks["ours"].append(ours())
            want = llama_cpp_penalised(raw, prompt + picks["ours"][:-1], settings.repeat_last_n, settings.repeat_penalty)
            assert np.array_equal(engine.last_logits().view(np.uint32), want.view(np.uint32)), "the row the chain read"
            runtime.decoder.step(picks["ours"][-1])  # on past an end of turn: the longer, the more the window is tested
    finally:
        for sampler in (ours, theirs, unpenalised):
            sampler.close()
    assert picks["ours"] == picks["theirs"]
    assert picks["unpenalised"] != picks["ours"], "the penalty must matter here"


def test_plain_greedy_is_an_argmax_that_picks_what_llama_cpps_greedy_stage_picks(runtime):
    """Plain greedy reads the logits row in Python, without the chain's per-token copy of the vocabulary."""
    plain, chain = NativeSampler(runtime.engine, GREEDY, []), LlamaCppChain(runtime.engine).greedy()
    assert plain.chain is None
    runtime.decoder.reset()
    runtime.decoder.prefill(_prompt_tokens(runtime, [{"role": "user", "content": PROMPT}]))
    for _ in range(24):
        token = plain()
        assert token == chain.sample()
        runtime.decoder.step(token)
    chain.close()


@pytest.mark.parametrize("filters", [{"top_k": 1}, {"top_k": 0, "top_p": 1e-6}])
def test_native_top_k_and_top_p_filter_before_the_draw(runtime, filters):
    """Left with one candidate, a hot draw is the greedy token: the filters run before the draw."""
    hot = SamplingSettings(temperature=1.5, repeat_penalty=1.0, seed=4, **filters)
    assert (
        Session(runtime, settings=hot).generate(PROMPT, max_tokens=24).tokens
        == Session(runtime, settings=GREEDY).generate(PROMPT, max_tokens=24).tokens
    )


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


def test_a_conversation_longer_than_the_window_keeps_going(model):
    """Turn after turn into a full window: the oldest exchanges leave the prompt, never the history, and the
    replies keep coming, each the reply of a fresh session given the same history."""
    n_ctx, max_tokens = 512, 32
    small = Runtime(model, n_ctx=n_ctx)
    try:
        s = Session(small, system_prompt="You answer in one sentence.", settings=GREEDY)
        replies = []
        for i in range(40):
            replies.append(s.generate(f"Exchange {i}: describe item {i} of a field radio kit, and why it matters.", max_tokens))
            if sum(r.dropped_turns for r in replies) >= 3:
                break
        dropped = sum(r.dropped_turns for r in replies)
        assert dropped >= 3 and s.first_turn == 2 * dropped
        assert len(s.history) == 2 * len(replies), "the history keeps every exchange; only the prompt leaves some out"
        assert all(r.prompt_tokens <= n_ctx - max_tokens for r in replies)
        assert max(r.prompt_tokens for r in replies) > n_ctx // 2, "the window was filled"
        assert all(r.finish in ("stop", "length") for r in replies) and sum(bool(r.tokens) for r in replies) > len(replies) // 2
        assert s.messages()[0]["role"] == "system" and s.messages()[1] == s.history[s.first_turn]
        last = replies[-1]
        fresh = _fresh_reply(model, s.history[:-2], s.history[-2]["content"], None, n_ctx, max_tokens, s.system_prompt)
        assert (last.prompt, last.tokens) == (fresh.prompt, fresh.tokens)
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


def test_input_embeddings_of_the_wrong_width_are_refused_before_llama_cpp_reads_them(runtime):
    """A real check, not an `assert` (gone under `python -O`): llama.cpp would read n_embd floats a row."""
    from appliance.errors import ModelFailed

    with pytest.raises(ModelFailed, match=r"\(n, 576\), not \(2, 575\)"):
        runtime.engine.decode_embeddings(np.zeros((2, 575), np.float32), 0)


def test_a_token_id_outside_the_vocabulary_is_refused_in_python(tmp_path):
    """llama.cpp's vocabulary lookups throw std::out_of_range on such an id, which aborts the whole process:
    each is checked before it reaches C (in a child, so that today's abort would not take pytest down)."""
    import subprocess
    import sys

    code = (
        "from appliance.errors import ModelFailed\n"
        "from appliance.runtime.llama import LlamaEngine\n"
        "from appliance.trust.builtin import embedded_pin\n"
        "engine = LlamaEngine(embedded_pin().path, n_ctx=64, n_threads=1)\n"
        "for call in (engine.token_text, engine.piece, engine.is_end_of_generation, lambda t: engine.decode_tokens([t], 0)):\n"
        "    for token in (engine.n_vocab, -1):\n"
        "        try:\n"
        "            call(token)\n"
        "        except ModelFailed as e:\n"
        "            print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout.splitlines()
        == ["token id 49152 is outside the vocabulary of 49152", "token id -1 is outside the vocabulary of 49152"] * 4
    )


def test_reply_text_is_assembled_from_token_bytes_a_split_character_waits_for_its_end():
    from appliance.runtime.session import Utf8Text

    streamed = []
    text = Utf8Text(streamed.append)
    for data in (b"caf", "é".encode()[:1], "é".encode()[1:], b" \xff", b""):
        text.add(data)
    text.add("€".encode()[:2], final=True)  # cut off at the end of the reply: one replacement character
    assert streamed == ["caf", "é", " \ufffd", "\ufffd"] and str(text) == "café \ufffd\ufffd"


class _Recorder:
    """A step observer that keeps what it was shown."""

    def __init__(self):
        self.prefills, self.steps, self.resets = [], [], 0

    def prefilled(self, tokens, on, logits):
        self.prefills.append((list(tokens), list(on), logits.copy()))

    def stepped(self, token, logits):
        self.steps.append(token)

    def reset(self):
        self.resets += 1


def test_a_step_observer_sees_every_forward_pass_and_changes_no_reply(runtime, model):
    runtime.decoder.reset()
    unobserved = Session.switched_on(runtime, _overlay(model), settings=GREEDY).generate(PROMPT, max_tokens=6)
    runtime.decoder.observer = seen = _Recorder()
    try:
        overlay = _overlay(model)
        reply = Session.switched_on(runtime, overlay, settings=GREEDY).generate(PROMPT, max_tokens=6)
        runtime.decoder.reset()
    finally:
        runtime.decoder.observer = None
    assert reply.tokens == unobserved.tokens and len(reply.tokens) == 6
    ((tokens, on, logits),) = seen.prefills
    assert tokens == reply.prompt and on == [overlay] and int(np.argmax(logits)) == reply.tokens[0]
    assert seen.steps == reply.tokens[:-1]  # the last token needs no forward pass
    assert seen.resets == 1
