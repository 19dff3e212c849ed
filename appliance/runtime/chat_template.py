"""The model's own chat template (from the GGUF metadata), rendered in a sandbox.

The template is data that arrived with the model file; an immutable sandboxed
Jinja2 environment keeps it from reaching Python objects or mutating state.
"""

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
