"""A past session read back as a conversation the model can continue: `chat --resume`, `ask --resume`, F4.

Rules, in order:
1. the session is read whole and verified (`read_session`): a broken one is refused (`JournalBroken`, exit 3),
   an erased one is `Erased` (exit 6), an unknown id `NotFound` (exit 5); nothing is written;
2. the history is what the model saw at the end: `message` records in order; a `regenerate` or
   `edit` record takes the last exchange back out (its texts stay in the journal); a prompt that
   never got a reply (the reply failed) is not part of it;
3. a session that was itself resumed starts with a `resume` record: the session it links is read
   the same way first (its sealed head then must still be the one linked), so a chain of resumes
   gives the whole conversation;
4. what conditioned the last reply (system prompt, preset, base, overlay, control vector, settings) is what
   its record says; the caller compares base, overlay and control vector with what is active now;
5. the link to write in the new session is this session's id and its sealed head (seq, hash).
"""

from dataclasses import dataclass, field
from typing import Optional

from ..errors import Refused
from ..overlay.loadable import LOADABLE
from ..vault import Vault
from .session_files import read_session, session_key_id

MAX_CHAIN = 64  # resumes of resumes followed; a longer chain is refused rather than read without end


class ResumeChainBroken(Refused):
    """A resumed session links a session that is gone or no longer ends where the link says."""


@dataclass(frozen=True)
class Link:
    """Where a resumed conversation came from: written as the first record of the new session."""

    session_id: str
    head_seq: int  # the vault's sealed head of that session when it was resumed
    head_hash: str

    def record(self) -> dict:
        return {"from_session": self.session_id, "from_head_seq": self.head_seq, "from_head_hash": self.head_hash}


@dataclass
class PastConversation:
    link: Link
    history: list[dict] = field(default_factory=list)  # {"role", "content"}, as runtime.session.Session holds it
    last: Optional[dict] = None  # the last reply's record: its provenance says what conditioned the conversation

    @property
    def system_prompt(self) -> Optional[str]:
        return self.last.get("system_prompt") if self.last else None

    @property
    def preset(self) -> Optional[str]:
        return self.last.get("preset") if self.last else None

    def item(self, key: str) -> Optional[dict]:
        """The record of the overlay or control vector (`key`: its kind's `RECORD`) the last reply was made with."""
        return self.last.get(key) if self.last else None

    @property
    def base(self) -> Optional[dict]:
        return self.last.get("base") if self.last else None

    def differences(self, base: dict, items: dict[str, Optional[dict]]) -> list[str]:
        """Notices where the base, or an overlay or control vector, recorded last is not the active one's record
        (`items`: the active ones' records by their `RECORD` key, None where none is loaded)."""
        notices = []
        was = self.base
        if was is not None and (was.get("sha256"), was.get("version")) != (base["sha256"], base["version"]):
            notices.append(
                f"recorded on base {was.get('name')} v{was.get('version')} {str(was.get('sha256'))[:12]}, not active now: "
                f"continuing on {base['name']} v{base['version']} {base['sha256'][:12]}"
            )
        for loadable in LOADABLE:
            notices += _changed(loadable.NOUN, self.item(loadable.RECORD), items[loadable.RECORD])
        return notices


def _changed(what: str, was: Optional[dict], now: Optional[dict]) -> list[str]:
    """A notice when the overlay (or control vector) a reply was recorded with is not the one loaded now."""
    if was is None:
        return []
    if now is None:
        return [f"recorded with {what} {was.get('name')} v{was.get('version')}, not loaded now: continuing without it"]
    if _identity(was) != _identity(now):
        return [
            f"recorded with {what} {was.get('name')} v{was.get('version')}; the active {what} is "
            f"{now['name']} v{now['version']}: continuing with it"
        ]
    return []


def _identity(overlay: dict) -> tuple:
    return overlay.get("name"), overlay.get("version"), overlay.get("sha256")


def past_conversation(vault: Vault, session_id: str) -> PastConversation:
    """Rules 1-5 for `session_id`."""
    return _read_chain(vault, session_id, expected_head=None, depth=0)


def _read_chain(vault: Vault, session_id: str, expected_head: Optional[tuple[int, str]], depth: int) -> PastConversation:
    records = read_session(vault, session_id)
    head = vault.head(session_key_id(session_id)) or (0, "")
    if expected_head is not None and tuple(head) != expected_head:
        raise ResumeChainBroken(f"session {session_id}, which the resumed one continues, no longer ends where it did")
    past = PastConversation(Link(session_id, head[0], head[1]))
    if records and records[0]["kind"] == "resume":
        if depth >= MAX_CHAIN:
            raise ResumeChainBroken(f"session {session_id} continues a chain of more than {MAX_CHAIN} resumed sessions")
        first = records[0]
        try:
            before = _read_chain(vault, first["from_session"], (first["from_head_seq"], first["from_head_hash"]), depth + 1)
        except KeyError:
            raise ResumeChainBroken(f"session {session_id}: its resume record does not name the session it continues") from None
        past.history, past.last = before.history, before.last
    for record in records:
        _replay(past, record)
    if past.history and past.history[-1]["role"] == "user":
        past.history.pop()  # rule 2: a prompt whose reply failed
    return past


def _replay(past: PastConversation, record: dict) -> None:
    history = past.history
    if record["kind"] == "message" and record.get("role") in ("user", "assistant"):
        if record["role"] == "user" and history and history[-1]["role"] == "user":
            history.pop()  # rule 2: the prompt before this one got no reply
        history.append({"role": record["role"], "content": record["text"]})
        if record["role"] == "assistant":
            past.last = record
    elif record["kind"] in ("regenerate", "edit") and len(history) >= 2 and history[-1]["role"] == "assistant":
        del history[-2:]
