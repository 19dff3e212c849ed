"""The build station's input files: training data, and prompt files.

Training data: JSONL, one conversation per line, each a list of {role, content} messages.
Rules, each reported with its line number:
  the line is UTF-8 JSON; the conversation is a non-empty list of objects with
  exactly `role` and `content`; roles are system, user, assistant; content is
  a string; a system message may only come first; at least one assistant turn
  (assistant turns are the training targets).

Prompt files (neutral prompts, preservation prompts, report prompts): UTF-8 text, one prompt a
line, blank lines skipped; a file with no prompt is refused, whichever command it is given to.
"""

import hashlib
import json
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


def _check_conversation(conv, where: str) -> None:
    if not isinstance(conv, list) or not conv:
        raise DatasetError(f"{where}: a conversation must be a non-empty list of messages")
    for i, msg in enumerate(conv):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise DatasetError(f"{where}: message {i + 1} must be an object with exactly 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise DatasetError(f"{where}: message {i + 1} has unknown role {msg['role']!r} (use {', '.join(ROLES)})")
        if not isinstance(msg["content"], str):
            raise DatasetError(f"{where}: message {i + 1} content must be a string")
        if msg["role"] == "system" and i > 0:
            raise DatasetError(f"{where}: message {i + 1}: a system message may only come first")
    if not any(m["role"] == "assistant" for m in conv):
        raise DatasetError(f"{where}: no assistant turn to learn from")


def load_dataset(path: Path) -> Dataset:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    conversations = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            conv = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{where}: not valid UTF-8 JSON ({e})") from None
        _check_conversation(conv, where)
        conversations.append(conv)
    if not conversations:
        raise DatasetError(f"{path}: no conversations")
    return Dataset(conversations, hashlib.sha256(data).hexdigest(), path)


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
