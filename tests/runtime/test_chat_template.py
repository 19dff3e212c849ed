"""The chat format: llama.cpp's built-in templates, chosen by name; a GGUF's own Jinja template never runs.

The references here render the models' own templates with jinja2, as their publishers do (Hugging Face's
`apply_chat_template`): the tests read those templates, the appliance never does.
"""

import itertools
from pathlib import Path

import llama_cpp as C
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.runtime.chat_template import SAMPLE, BuiltinTemplate, _apply, builtin_names, detected_builtin
from appliance.trust.builtin import VerifiedModel

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

GEMMA_TEMPLATE = Path(__file__).parents[1] / "training" / "gemma3_chat_template.jinja"  # Gemma's own; its GGUF has none
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "  two\nlines  "}, {"role": "assistant", "content": " ok "}, {"role": "user", "content": "x"}],
]  # fmt: skip


def reference(source: str, messages: list[dict], add_generation_prompt: bool, bos_token: str = "") -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_embedded_model_renders_as_its_own_template_but_for_the_default_system_prompt(runtime, add_generation_prompt):
    """SmolLM2's GGUF template is ChatML; llama.cpp's `chatml` gives the same text, except that the model's
    template adds a default system prompt when none is given, and the appliance does not (chat_template.py)."""
    source = C.llama_model_chat_template(runtime.engine.model, None).decode()
    assert runtime.template.name == "chatml" and runtime.template.bos_token == ""
    for messages in CONVERSATIONS:
        ours = runtime.template.render(messages, add_generation_prompt)
        theirs = reference(source, messages, add_generation_prompt)
        if messages[0]["role"] == "system":
            assert ours == theirs
        else:
            assert theirs == f"<|im_start|>system\n{SMOLLM_DEFAULT_SYSTEM}<|im_end|>\n" + ours


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma_renders_as_its_own_template(gemma_gguf, add_generation_prompt):
    from appliance.runtime.session import Runtime

    runtime = Runtime(VerifiedModel("gemma3-270m", 1, gemma_gguf, ""), n_ctx=128, n_threads=1, sequences=1)
    try:
        assert C.llama_model_chat_template(runtime.engine.model, None) is None  # the GGUF carries none: by architecture
        assert (runtime.template.name, runtime.template.bos_token) == ("gemma", "<bos>")
        for messages in CONVERSATIONS:
            ours = runtime.template.render(messages, add_generation_prompt)
            assert ours == reference(GEMMA_TEMPLATE.read_text(), messages, add_generation_prompt, bos_token="<bos>")
    finally:
        runtime.close()


@pytest.mark.parametrize(
    "source, name",
    [
        ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", "chatml"),
        (GEMMA_TEMPLATE.read_text(), "gemma"),
        ("{{ bos_token }}<|start_header_id|>{{ m.role }}<|end_header_id|>", "llama3"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", None),  # names no format: refused at import
        ("{% for m in messages %}{{ m.content }}{% endfor %}", None),
    ],
)
def test_the_format_is_read_from_the_template_text_never_run(source, name):
    assert detected_builtin(source) == name


def test_the_sample_tells_apart_every_two_built_ins_that_differ_on_the_roles_we_send():
    """Two built-ins that render SAMPLE alike render every conversation of system, user and assistant turns
    alike, so the first by name is as good as the other (they differ only on tool roles)."""
    names = builtin_names()
    assert len(names) > 40 and "chatml" in names and "gemma" in names
    alike = [(a, b) for a, b in itertools.combinations(names, 2) if _apply(a, SAMPLE) == _apply(b, SAMPLE)]
    for a, b in alike:
        for messages, prompt in itertools.product([*CONVERSATIONS, SAMPLE[1:], SAMPLE[:2]], [True, False]):
            assert _apply(a, messages, prompt) == _apply(b, messages, prompt), (a, b, messages)
    assert len(alike) < 5, alike  # a handful, each checked above


def test_a_built_in_that_cannot_render_a_conversation_is_a_refusal():
    from appliance.errors import Refused

    with pytest.raises(Refused, match="'no-such-template'"):
        BuiltinTemplate("no-such-template").render([{"role": "user", "content": "x"}])
