"""A chat-completions request, read from its bytes: the rules in order, each a refusal with its own code.

1. the body is at most `MAX_BODY` bytes (`RequestTooLarge`; the server stops reading past the cap);
2. it is UTF-8 (`RequestNotUtf8`), then one JSON object with no duplicate key, NaN or Infinity
   (`RequestNotJson`), and no string in it holds a lone surrogate (`RequestNotUtf8`: the journal
   stores UTF-8);
3. its fields have the types and ranges of `SCHEMA` (`RequestInvalid`): the OpenAI fields this API
   acts on, and three of its own: `overlay` and `control` ("on"/"off", default off as `ask`) and
   `session` (the id a reply returned, to continue that conversation);
4. `model` is the active base's name (`UnknownModel`);
5. the messages are a new session's optional system message and one user message, or with `session`
   only the next user message: the appliance keeps the conversation (and journals it), the client
   does not send it back. A prompt that is empty or only whitespace is refused, as `ask` refuses it.

Fields of the protocol this API does not act on (`top_p`, `stop`, ...) are ignored, as the protocol
lets a server do. Nothing here opens the vault or touches the model: a refused request journals nothing.
"""

from dataclasses import dataclass
from typing import Optional

import jsonschema

from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..untrusted_json import JsonRejected, load_untrusted
from .errors import RequestInvalid, RequestNotJson, RequestNotUtf8, UnknownModel

MAX_BODY = 1024 * 1024  # bytes: a prompt longer than any window, far below what a request could cost in memory
DEFAULT_MAX_TOKENS = 256  # as `ask`

_TOKENS = {"type": "integer", "minimum": 1, "maximum": 4096}
SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
            },
        },
        "stream": {"type": "boolean"},
        "max_tokens": _TOKENS,
        "max_completion_tokens": _TOKENS,
        "temperature": {"type": "number", "minimum": 0, "maximum": 5},
        "seed": {"type": "integer"},
        "overlay": {"enum": ["on", "off"]},
        "control": {"enum": ["on", "off"]},
        "session": {"type": "string"},
    },
}


SWITCHES = {"overlay": Overlay.KIND, "control": ControlVector.KIND}  # request field -> the kind it switches on


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    system_prompt: Optional[str]  # None: the model's own default
    session: Optional[str]  # continue this journal session
    stream: bool
    max_tokens: int
    temperature: float
    seed: int
    on: frozenset[str]  # the kinds asked on (`"overlay": "on"`, `"control": "on"`; default off, as `ask`)


def parse_chat_request(body: bytes, model_name: str) -> ChatRequest:
    """Rules 2-5 (the server keeps rule 1 while reading)."""
    request = _json_object(body)
    _valid(request)
    if request["model"] != model_name:
        raise UnknownModel(f"no model {request['model']!r}: this appliance serves {model_name!r}")
    system_prompt, prompt = _turn(request["messages"], continuing="session" in request)
    return ChatRequest(
        prompt=prompt,
        system_prompt=system_prompt,
        session=request.get("session"),
        stream=request.get("stream", False),
        max_tokens=request.get("max_completion_tokens", request.get("max_tokens", DEFAULT_MAX_TOKENS)),
        temperature=request.get("temperature", 0.7),
        seed=request.get("seed", 0),
        on=frozenset(kind for field, kind in SWITCHES.items() if request.get(field) == "on"),
    )


def _json_object(body: bytes) -> dict:
    """Rule 2, by the reader of every JSON from outside (`untrusted_json`: no duplicate key, no NaN, a depth
    cap), with UTF-8 refused under its own code first."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestNotUtf8(f"the request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})") from None
    try:
        value = load_untrusted(body)
    except JsonRejected as e:
        raise RequestNotJson(f"the request body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise RequestNotJson("the request body is not a JSON object")
    _no_surrogates(value)
    return value


def _no_surrogates(value) -> None:
    """A `\\ud800` escape decodes to a lone surrogate: JSON, but no UTF-8 text to journal."""
    if isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k)
            _no_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestNotUtf8("a string in the request holds a lone surrogate (not UTF-8 text)") from None


def _valid(request: dict) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(request))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the request"
        raise RequestInvalid(f"{where}: {error.message}")


def _turn(messages: list[dict], continuing: bool) -> tuple[Optional[str], str]:
    """(system prompt, the user's prompt) from the messages, by rule 5."""
    roles = [m["role"] for m in messages]
    if continuing and roles != ["user"]:
        raise RequestInvalid("with `session`, send only the next user message: the appliance keeps the conversation")
    if roles not in (["user"], ["system", "user"]):
        raise RequestInvalid(
            "a new session takes an optional system message and one user message; continue a conversation "
            "by passing the `session` a reply returned"
        )
    prompt = messages[-1]["content"]
    if not prompt.strip():
        raise RequestInvalid("the prompt is empty (or only whitespace)")
    return (messages[0]["content"] if roles[0] == "system" else None), prompt
