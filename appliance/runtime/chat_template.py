"""The chat format of a base: one of llama.cpp's built-in templates, chosen by name. A GGUF's own template never runs.

A GGUF's `tokenizer.chat_template` is a Jinja program that arrived with the model file. Run, it could
loop forever, take all memory, or render one thing when the import probe tried it and another at
`ask`. So it is never run: it is only read, as text, to tell which format the model was trained on.
The name is chosen once per loaded model (`template_for`), in this order:

1. the GGUF has a template: the built-in that llama.cpp's own detection finds in its text
   (`llm_chat_detect_template`, reached through `llama_chat_apply_template`: plain substring checks
   such as `<|im_start|>` for ChatML or `<start_of_turn>` for Gemma; it parses nothing). llama.cpp
   does not say the name it detected, so the name is the first built-in that renders a sample
   conversation exactly as the detected format does (`SAMPLE` tells apart every pair of built-ins
   that differ on the roles the appliance sends; the few that differ only on tool roles are the same
   format here, and the first by name is taken);
2. the GGUF has none: the built-in for its architecture (`BUILTIN_BY_ARCHITECTURE`, else one named
   like the architecture, e.g. `phi3`);
3. neither: `ChatTemplateUnsupported`, which the import probe turns into a refusal (exit 3), so an
   installed base always has its name.

What the model then sees is exactly the conversation the appliance holds (system prompt, if any, and
turns) in that format, applied by llama.cpp (`BuiltinTemplate`). Text a template would have added by
itself (SmolLM2's default system prompt, "You are a helpful AI assistant named SmolLM, trained by
Hugging Face", when none is given) is not: a system prompt is the operator's (`--system`, presets).
"""

import ctypes
from typing import Optional

import llama_cpp as C

from ..errors import Refused
from .llama import LlamaEngine


class ChatTemplateUnsupported(Refused):
    """A base whose chat format none of llama.cpp's built-in templates covers: it is not installed."""


# Architectures whose one chat format llama.cpp builds in under another name. Others are matched only
# where the architecture's name is a built-in's name (phi3, granite, ...); `llama` is not mapped: its
# GGUFs come in several chat formats, and a wrong guess would be silent.
BUILTIN_BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}

# Every role the appliance sends, content with the whitespace some formats strip, two turns.
SAMPLE = [
    {"role": "system", "content": " S \n"},
    {"role": "user", "content": " U1 \n"},
    {"role": "assistant", "content": " A1 \n"},
    {"role": "user", "content": " U2 \n"},
]


class BuiltinTemplate:
    """llama.cpp's built-in chat template `name`, applied by llama.cpp (a system message, where the
    format has no system role, is folded into the first user turn by llama.cpp itself)."""

    def __init__(self, name: str, bos_token: str = ""):
        self.name, self.bos_token = name, bos_token  # llama.cpp's built-ins leave out the BOS a model may need

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = _apply(self.name, messages, add_generation_prompt)
        if text is None:
            raise Refused(f"llama.cpp's built-in chat template {self.name!r} cannot render this conversation")
        return self.bos_token + text


def template_for(engine: LlamaEngine) -> BuiltinTemplate:
    """Rules 1-3 for a loaded model: its built-in template, with the BOS text the model wants first."""
    source = C.llama_model_chat_template(engine.model, None)  # the whole value, as llama.cpp holds it
    architecture = engine.metadata("general.architecture") or ""
    if source:  # an empty value is no template
        name = detected_builtin(source.decode("utf-8", "replace"))
        if name is None:
            raise ChatTemplateUnsupported(
                "the GGUF's chat template is in a format none of llama.cpp's built-in templates covers "
                "(its own template never runs)"
            )
    else:
        name = builtin_for_architecture(architecture)
        if name is None:
            raise ChatTemplateUnsupported(
                f"no chat template in the GGUF, and llama.cpp has none built in for architecture {architecture!r}"
            )
    return BuiltinTemplate(name, engine.bos_text())


def detected_builtin(source: str) -> Optional[str]:
    """Rule 1: the built-in that llama.cpp detects in a template's text, by name; None if it detects none."""
    detected = _apply(source, SAMPLE)
    if detected is None:
        return None
    return next((name for name in builtin_names() if _apply(name, SAMPLE) == detected), None)


def builtin_for_architecture(architecture: str) -> Optional[str]:
    """Rule 2: the llama.cpp built-in template for a GGUF architecture that carries none, or None."""
    name = BUILTIN_BY_ARCHITECTURE.get(architecture, architecture)
    return name if name in builtin_names() else None


def builtin_names() -> list[str]:
    """llama.cpp's built-in template names, in its (alphabetical) order."""
    n = C.llama_chat_builtin_templates(None, 0)
    out = (ctypes.c_char_p * n)()
    C.llama_chat_builtin_templates(out, n)
    return [name.decode() for name in out[:n] if name]


def _apply(template: str, messages: list[dict], add_generation_prompt: bool = True) -> Optional[str]:
    """llama.cpp's `llama_chat_apply_template`: a built-in's name, or a template's text to detect one in."""
    encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (C.llama_chat_message * len(encoded))(*(C.llama_chat_message(role, content) for role, content in encoded))
    size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = C.llama_chat_apply_template(template.encode(), chat, len(encoded), add_generation_prompt, buf, size)
        if n < 0:
            return None
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n
    raise Refused("llama.cpp's chat template gave no stable length")
