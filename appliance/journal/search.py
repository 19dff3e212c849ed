"""Search every journal session for a word or phrase, in memory: `logs search` and the sessions screen.

Sessions are decrypted and verified one at a time (`verify_session`), the newest first, and their
matches yielded as they are found, so the first results show before the last session is read and
only one session's plaintext is held at a time. Nothing is written: no index, no cache, no
temporary file (an index would be the plaintext of the journal on disk).

Matching is case-insensitive and literal (the text is not a pattern). The text fields of every
record kind are searched: a message's text, and the replaced text a `regenerate` or `edit` keeps.
A session that cannot be read (erased key, missing) or that is broken is reported as `Skipped`;
of a broken one, the authentic records before the break are still searched.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import Erased, NotFound, UsageError
from ..vault import Vault
from .index import message_model
from .session_files import sessions, verify_session

TEXT_FIELDS = ("text", "replaced")  # the fields that hold words someone wrote or the model said
SNIPPET_SIDE = 30  # characters of context either side of the match


@dataclass(frozen=True)
class Match:
    session_id: str
    record: int  # the record's number in its session, from 1 (as `logs show` numbers them)
    time: str
    role: str  # a message's role; for other records, their kind
    snippet: str  # one line around the first match in the record (raw: front ends escape it)
    provenance: str  # what produced a message: base, and the overlay with its switch


@dataclass(frozen=True)
class Skipped:
    session_id: str
    reason: str


def search(vault: Vault, text: str, session_ids: Optional[list[str]] = None) -> Iterator[Union[Match, Skipped]]:
    """Every record (of `session_ids`, default all, newest session first) whose text holds `text`, session by session."""
    if not text.strip():
        raise UsageError("search for what? the text is empty")
    pattern = re.compile(re.escape(text), re.IGNORECASE)
    for sid in reversed(sessions(vault)) if session_ids is None else session_ids:
        try:
            report = verify_session(vault, sid)
        except (Erased, NotFound) as e:
            yield Skipped(sid, f"unreadable: {e}")
            continue
        for n, record in enumerate(report.records, 1):
            for name in TEXT_FIELDS:
                value = record.get(name)
                if not isinstance(value, str):
                    continue
                hit = pattern.search(value)
                if hit is not None:
                    yield Match(sid, n, record.get("time", ""), record.get("role") or record["kind"],
                                snippet(value, hit.start(), hit.end()), _provenance(record))  # fmt: skip
                    break
        if report.broken_at is not None:
            yield Skipped(sid, f"broken at {report.broken_at}; records 1..{len(report.records)} were searched")


def snippet(text: str, start: int, end: int, side: int = SNIPPET_SIDE) -> str:
    """The match and `side` characters around it, on one line; '...' where the text goes on."""
    lo, hi = max(0, start - side), min(len(text), end + side)
    line = " ".join(text[lo:hi].split())
    return ("..." if lo else "") + line + ("..." if hi < len(text) else "")


def _provenance(record: dict) -> str:
    return message_model(record) if record.get("kind") == "message" else record.get("kind", "")
