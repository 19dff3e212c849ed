"""The request rules of the API (appliance/api/requests.py) as a function: bytes in, a request or a typed refusal out."""

import json

import pytest

from appliance.api.errors import (
    RequestInvalid,
    RequestNotJson,
    RequestNotUtf8,
    RequestTooLarge,
    UnknownModel,
    error_object,
    status_of,
)
from appliance.api.requests import DEFAULT_MAX_TOKENS, ChatRequest, parse_chat_request
from appliance.errors import ContextOverflow, NoOverlay
from appliance.vault.killswitch import Killed

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

MODEL = "smollm2-135m-instruct-q4_1"


def body(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], **fields}).encode()


def test_a_plain_request_takes_the_defaults_of_ask():
    assert parse_chat_request(body(), MODEL) == ChatRequest(
        prompt="Hello", system_prompt=None, session=None, stream=False, max_tokens=DEFAULT_MAX_TOKENS,
        temperature=0.7, seed=0, on=frozenset(),
    )  # fmt: skip


def test_the_extra_fields_and_the_system_message_are_read():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    request = parse_chat_request(
        body(messages=messages, stream=True, max_completion_tokens=9, temperature=0, seed=3, overlay="on", control="on"), MODEL
    )
    assert (request.system_prompt, request.prompt, request.stream, request.max_tokens) == ("Be brief.", "Hi", True, 9)
    assert (request.temperature, request.seed, request.on) == (0, 3, {"overlay", "control-vector"})
    assert parse_chat_request(body(session="20261207T155336Z-cd9ba3cc"), MODEL).session == "20261207T155336Z-cd9ba3cc"


@pytest.mark.parametrize(
    "raw, refusal",
    [
        (b"\xff\xfe{}", RequestNotUtf8),
        (body(messages=[{"role": "user", "content": "\udc80"}]).replace(b"\\udc80", b"\\ud800"), RequestNotUtf8),
        (b'{"model": "x", "messages": [', RequestNotJson),
        (b"[1, 2]", RequestNotJson),
        (b'{"model": "a", "model": "b", "messages": []}', RequestNotJson),
        (b'{"model": "x", "messages": [], "temperature": NaN}', RequestNotJson),
        (b"[" * 100_000 + b"]" * 100_000, RequestNotJson),  # nested past the depth cap: a refusal, not a RecursionError
        (body(model=7), RequestInvalid),
        (body(messages="Hello"), RequestInvalid),
        (body(messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]), RequestInvalid),
        (body(max_tokens="5"), RequestInvalid),
        (body(max_tokens=0), RequestInvalid),
        (body(temperature=9), RequestInvalid),
        (body(stream="yes"), RequestInvalid),
        (body(overlay=True), RequestInvalid),
        (body(messages=[]), RequestInvalid),
        (body(messages=[{"role": "user", "content": "   "}]), RequestInvalid),
        (body(messages=[{"role": "assistant", "content": "Hi"}]), RequestInvalid),
        (body(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]), RequestInvalid),
        (body(session="s", messages=[{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]), RequestInvalid),
        (body(model="gpt-4o"), UnknownModel),
    ],
    ids=["not-utf8", "lone-surrogate", "truncated", "not-an-object", "duplicate-key", "nan", "too-deep", "model-type", "messages-type",
         "content-parts", "tokens-type", "tokens-zero", "temperature-range", "stream-type", "overlay-type", "no-messages",
         "blank-prompt", "no-user-turn", "history-resent", "session-with-system", "unknown-model"],
)  # fmt: skip
def test_each_bad_request_is_refused_with_its_code(raw, refusal):
    with pytest.raises(refusal) as refused:
        parse_chat_request(raw, MODEL)
    assert error_object(refused.value)["error"]["code"] == refusal.reason
    assert status_of(refused.value) == (404 if refusal is UnknownModel else 400)


@pytest.mark.parametrize(
    "error, status, code",
    [
        (RequestTooLarge("big"), 413, "request-too-large"),
        (ContextOverflow("long"), 400, "context-overflow"),
        (NoOverlay("none"), 404, "no-overlay"),
        (Killed(False), 503, "killed"),
        (RuntimeError("a bug"), 500, "internal-error"),
    ],
)
def test_the_status_follows_the_exit_code_and_the_code_is_the_reason(error, status, code):
    assert status_of(error) == status
    assert error_object(error)["error"]["code"] == code
    assert error_object(error)["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
