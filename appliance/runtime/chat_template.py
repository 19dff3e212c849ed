"""The model's own chat template (from the GGUF metadata), rendered in a sandbox.

The template is data that arrived with the model file; an immutable sandboxed
Jinja2 environment keeps it from reaching Python objects or mutating state.

A GGUF without a template (Gemma 3 270M ships none) is chatted with through
llama.cpp's built-in template for its architecture (`BuiltinTemplate`): the
format the model was trained on, written once in llama.cpp and applied by
`llama_chat_apply_template` to our messages only, so no code arrives with the
file. An architecture without a built-in is refused at import
(`runtime.probe`), never guessed.
"""

import ctypes
from typing import Optional

import llama_cpp as C
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import Refused


def _raise(message: str):
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise Refused(f"the model's chat template does not compile: {e}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as e:
            raise Refused(f"the model's chat template refused to render: {e}") from None


# Architectures whose one chat format llama.cpp builds in under another name. Others are matched only
# where the architecture's name is a built-in's name (phi3, granite, ...); `llama` is not mapped: its
# GGUFs come in several chat formats, and a wrong guess would be silent.
BUILTIN_BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}


def builtin_template_for(architecture: str) -> Optional[str]:
    """The llama.cpp built-in template for a GGUF architecture that carries none, or None."""
    names = _builtin_names()
    name = BUILTIN_BY_ARCHITECTURE.get(architecture, architecture)
    return name if name in names else None


def _builtin_names() -> set[str]:
    n = C.llama_chat_builtin_templates(None, 0)
    out = (ctypes.c_char_p * n)()
    C.llama_chat_builtin_templates(out, n)
    return {name.decode() for name in out[:n] if name}


class BuiltinTemplate:
    """llama.cpp's built-in chat template `name`, applied by llama.cpp (a system message, where the
    format has no system role, is folded into the first user turn by llama.cpp itself)."""

    def __init__(self, name: str, bos_token: str = ""):
        self.name, self.bos_token = name, bos_token  # llama.cpp's built-ins leave out the BOS a model may need

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
        chat = (C.llama_chat_message * len(encoded))(*(C.llama_chat_message(role, content) for role, content in encoded))
        size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = C.llama_chat_apply_template(self.name.encode(), chat, len(encoded), add_generation_prompt, buf, size)
            if n < 0:
                raise Refused(f"llama.cpp's built-in chat template {self.name!r} cannot render this conversation")
            if n <= size:
                return self.bos_token + buf.raw[:n].decode("utf-8")
            size = n
        raise Refused(f"llama.cpp's built-in chat template {self.name!r} gave no stable length")
