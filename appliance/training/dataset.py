"""The build station's input files: training data, contrastive pairs, and prompt files (no torch here).

Training data: JSONL, one conversation per line, each a list of {role, content} messages.
Rules, each reported with its line number:
  the line is UTF-8 JSON; the conversation is a non-empty list of objects with
  exactly `role` and `content`; roles are system, user, assistant; content is
  a string; a system message may only come first; at least one assistant turn
  (assistant turns are the training targets).

Contrastive pairs (`overlay steer`, `--heal`): JSONL, one {"positive": [messages], "negative": [messages]}
a line, each side as above but ending with a user turn, both with the same user turns.

Prompt files (neutral prompts, preservation prompts, report prompts): UTF-8 text, one prompt a
line, blank lines skipped; a file with no prompt is refused, whichever command it is given to.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

ROLES = ("system", "user", "assistant")


class DatasetError(UsageError):
    """A training dataset that is not a list of well-formed conversations."""

    reason = "dataset-rejected"  # like overlay-rejected: the file given is not admitted


@dataclass(frozen=True)
class Dataset:
    conversations: list[list[dict]]
    sha256: str
    path: Path


@dataclass(frozen=True)
class ContrastPair:
    positive: list[dict]  # messages ending with a user turn
    negative: list[dict]  # the same user turns, another system prompt or example


@dataclass(frozen=True)
class Pairs:
    pairs: list[ContrastPair]
    sha256: str


def _jsonl(path: Path) -> tuple[bytes, Iterator[tuple[str, object]]]:
    """The file's bytes (for its digest), and each non-blank line's JSON value with where it is (`path:line`)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None

    def lines() -> Iterator[tuple[str, object]]:
        for n, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatasetError(f"{where}: not valid UTF-8 JSON ({e})") from None

    return data, lines()


def _messages(value: object, where: str, side: str = "") -> list[dict]:
    """`value` as a list of well-formed messages (a conversation, or one `side` of a pair), or `DatasetError`."""
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: {side or 'a conversation'} must be a non-empty list of messages")
    prefix = f"{side} " if side else ""
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise DatasetError(f"{where}: {prefix}message {i + 1} must be an object with exactly 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise DatasetError(f"{where}: {prefix}message {i + 1} has unknown role {msg['role']!r} (use {', '.join(ROLES)})")
        if not isinstance(msg["content"], str):
            raise DatasetError(f"{where}: {prefix}message {i + 1} content must be a string")
        if msg["role"] == "system" and i > 0:
            raise DatasetError(f"{where}: {prefix}message {i + 1}: a system message may only come first")
    return value


def load_dataset(path: Path) -> Dataset:
    data, lines = _jsonl(path)
    conversations = []
    for where, value in lines:
        conv = _messages(value, where)
        if not any(m["role"] == "assistant" for m in conv):
            raise DatasetError(f"{where}: no assistant turn to learn from")
        conversations.append(conv)
    if not conversations:
        raise DatasetError(f"{path}: no conversations")
    return Dataset(conversations, hashlib.sha256(data).hexdigest(), path)


def _user_turns(side: list[dict]) -> list[str]:
    return [m["content"] for m in side if m["role"] == "user"]


def load_pairs(path: Path) -> Pairs:
    """One JSON object a line: {"positive": [messages], "negative": [messages]}, the same user turns in both."""
    data, lines = _jsonl(path)
    pairs = []
    for where, obj in lines:
        if not isinstance(obj, dict) or set(obj) != {"positive", "negative"}:
            raise DatasetError(f"{where}: a pair must be an object with exactly 'positive' and 'negative'")
        positive, negative = (_messages(obj[side], where, side) for side in ("positive", "negative"))
        for side, messages in (("positive", positive), ("negative", negative)):
            if messages[-1]["role"] != "user":
                raise DatasetError(f"{where}: {side} must end with a user turn (the reply starts after it)")
        if _user_turns(positive) != _user_turns(negative):
            raise DatasetError(f"{where}: positive and negative must have the same user turns")
        pairs.append(ContrastPair(positive, negative))
    if not pairs:
        raise DatasetError(f"{path}: no pairs")
    return Pairs(pairs, hashlib.sha256(data).hexdigest())


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompt file, or `UsageError` (exit 2) if it holds none or is not UTF-8 text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{path}: no prompts")
    return prompts
