"""JSON that came from outside the process (a bundle, a signed artifact, a state file), parsed by one set of rules.

In order, each a `JsonRejected` naming the fault (the caller wraps it in its own refusal):

1. the bytes are UTF-8;
2. no object or array is nested deeper than `MAX_DEPTH`, counted before parsing: Python's parser
   recurses, and a document nested thousands deep would stop it with `RecursionError`;
3. they are JSON, with no key twice in one object (two parsers could pick different values) and no
   NaN or Infinity (not JSON, and not comparable).

What the document means is the caller's: these rules only make sure that what it checks is what
every other JSON reader would see.
"""

import json
import re

MAX_DEPTH = 32  # far above any document the appliance reads (a manifest is 3 deep, an OCI manifest 4)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a string's brackets are text, not nesting
_BRACKET = re.compile(r"[\[\]{}]")


class JsonRejected(ValueError):
    """The bytes break one of the rules; the message says which, for the caller's one-line refusal."""


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonRejected(f"not valid UTF-8 (byte {e.start})") from None


def _check_depth(text: str) -> None:
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_DEPTH:
            raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels")


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise JsonRejected(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _no_constant(name: str):
    raise JsonRejected(f"{name} is not JSON")


def load_untrusted(data: bytes) -> object:
    """Rules 1-3: the parsed document, or `JsonRejected`."""
    text = _decode(data)
    _check_depth(text)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise JsonRejected(f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
