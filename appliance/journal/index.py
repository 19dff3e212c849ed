"""The sessions' summaries, sealed beside the journal, so that `logs list` and the sessions screen show a
page of sessions without reading every one: `<state>/journal/index` and `<state>/journal/index.tail`.

    each line = LOW " " HIGH " " base64(nonce || AES-256-GCM(index key,
                    JSON [[id, time, first, model, client, seen, final], ...], INDEX_AD " " LOW " " HIGH))
    index key = HKDF-SHA256(the journal key, INDEX_INFO)                                (`Vault.journal_subkey`)

LOW and HIGH are the lowest and highest session id the line holds (ids are the journal's file names,
in the clear beside it anyway; the associated data binds them): a page of sessions opens only the
lines that can hold its ids, so the newest page reads a few lines whatever the history's length.

A summary is what a session's first records say and never changes once its first message is written
(`final`): its id, the time of its first record, the start of its first message, the base and overlay
that answered it, the program that asked (a session of the API). How many records it has is the
vault's sealed head, never the index's.

Rules, in order:
1. The journal is the authority: which sessions exist is what the vault and the journal folder say
   (`sessions`), how many records each sealed is its head. The index only spares reading a session's
   first records to summarise it. A summary is appended to the tail by the append that makes it (up to
   the session's first message), after the record and its head; it is not fsynced (rule 2 covers a loss).
2. A session the index has no summary for, or one written before its first message at another record
   count than its head's, is read from the journal (`verify_session`, as `logs verify` reads it) and its
   summary appended: an index deleted, cut short by a crash or put back from an older copy is rebuilt
   where it is behind; it is never trusted for a session it does not know, and never lists one.
3. A line that does not open under this vault's index key (damaged, torn by a crash, from another vault,
   or sealed under a journal key `erase logs` has since dropped) counts for nothing: its sessions are read
   again (rule 2), the command says so (`Listing.unopened`), and the index is written again without it.
4. When the tail passes `TAIL_BYTES` its writer folds both files into `index` (lines of `CHUNK` summaries
   in the order of their ids, an atomic rename under the vault lock) and then removes the tail: a crash in between leaves both, holding the
   same summaries. One appended by another process in between is lost, and rule 2 reads it again.
5. Crypto-erase: the key is derived from the journal key, so `erase logs` makes every copy of these files
   unreadable at once (the files then go with the journal folder). A session is never erased alone.
"""

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag

from ..fsutil import atomic_write
from ..vault import Vault
from ..vault.aead import seal, unb64, unseal
from ..vault.disk import vault_lock

JOURNAL_DIR = "journal"  # under the state dir: the sessions' files and these two
INDEX_FILE, TAIL_FILE = "index", "index.tail"
INDEX_AD = b"appliance-journal-index/1"
INDEX_INFO = b"appliance-journal-index/1 key"
TAIL_BYTES = 1 << 20  # ~3,000 summaries: reading the tail stays a few ms, folding it in is rare
CHUNK = 1000  # summaries a line of the folded index: a page opens one or two
FIRST_CHARS = 120  # of the first message kept: more than any listing shows


@dataclass(frozen=True)
class Summary:
    session_id: str
    time: str  # of its first record; "" where it has none
    first: str  # the start of its first message on one line; else "(kind)" of its first record
    model: str  # the base and overlay of its first message; "" where there is none
    client: str  # the program that asked, for a session of the API; else ""
    seen: int  # the records it had when summarised
    final: bool  # its first message was among them: nothing above changes any more

    def row(self) -> list:
        return [self.session_id, self.time, self.first, self.model, self.client, self.seen, self.final]


def summarise(session_id: str, records: list[dict]) -> Summary:
    """The summary of a session from its first records (all of them, or those up to its first message)."""
    first = next((r for r in records if r.get("kind") == "message"), None)
    if first is not None:
        text = " ".join(str(first.get("text", ""))[: FIRST_CHARS + 1].split())[:FIRST_CHARS]
        client = client_text(first["client"]) if first.get("client") else ""
        model = message_model(first)
    else:
        text, client, model = (f"({records[0]['kind']})" if records else ""), "", ""
    return Summary(
        session_id, records[0].get("time", "") if records else "", text, model, client, len(records), first is not None
    )


def message_model(record: dict) -> str:
    """What answered a message: its base, and its overlay with its switch."""
    base, ov = record.get("base"), record.get("overlay")
    overlay = f"{ov['name']} v{ov['version']} {'on' if ov['on'] else 'off'}" if ov else "no overlay"
    return f"{base['name']} + {overlay}" if base else overlay


def client_text(client: dict) -> str:
    """A journalled `client` field, on one line: the executable as the kernel reported it, and the pid."""
    return f"{client.get('exe') or 'unknown executable'} (pid {client.get('pid')})"


def index_key(vault: Vault) -> bytearray | None:
    return vault.journal_subkey(INDEX_INFO)


def _paths(home: Path) -> tuple[Path, Path]:
    return home / JOURNAL_DIR / INDEX_FILE, home / JOURNAL_DIR / TAIL_FILE


def _line(key: bytearray, summaries: list[Summary]) -> bytes:
    ids = [s.session_id for s in summaries]
    low, high = min(ids).encode(), max(ids).encode()
    sealed = seal(key, json.dumps([s.row() for s in summaries]).encode(), INDEX_AD + b" " + low + b" " + high)
    return low + b" " + high + b" " + sealed.encode() + b"\n"


def add(home: Path, key: bytearray, summaries: list[Summary]) -> None:
    """Rule 1: append `summaries` to the tail (one write); rule 4 where the tail grew past its bound."""
    if not summaries:
        return
    _, tail = _paths(home)
    fd = os.open(tail, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, _line(key, summaries))  # one write, under PIPE_BUF or not: O_APPEND keeps lines whole
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > TAIL_BYTES:
        index = Index(home, key)
        index.open_all()
        rewrite(home, key, index.known())


def rewrite(home: Path, key: bytearray, summaries: list[Summary]) -> None:
    """`index` replaced by `summaries` in lines of `CHUNK` in the order of their ids, the tail removed (rules 3, 4)."""
    ordered = sorted(summaries, key=lambda s: s.session_id)
    data = b"".join(_line(key, ordered[n : n + CHUNK]) for n in range(0, len(ordered), CHUNK))
    index, tail = _paths(home)
    with vault_lock(home):
        atomic_write(index, data)
        tail.unlink(missing_ok=True)


class Index:
    """Both files as read once, each line opened when a session it can hold is asked for."""

    def __init__(self, home: Path, key: bytearray):
        self._key = key
        self._lines: list[tuple[str, str, bytes] | None] = []  # (low, high, sealed); None once opened
        self._known: dict[str, Summary] = {}
        self.unopened = 0  # lines that did not open (rule 3)
        for path in _paths(home):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data.splitlines():
                parts = line.split(b" ", 2)
                if len(parts) != 3:
                    self.unopened += 1
                    continue
                self._lines.append((parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace"), parts[2]))

    def open_for(self, session_ids: list[str]) -> None:
        """Open every line that can hold one of `session_ids`."""
        wanted = sorted(session_ids)
        for n, line in enumerate(self._lines):
            if line is not None and bisect.bisect_right(wanted, line[1]) > bisect.bisect_left(wanted, line[0]):
                self._open(n, line)

    def open_all(self) -> None:
        for n, line in enumerate(self._lines):
            if line is not None:
                self._open(n, line)

    def get(self, session_id: str) -> Summary | None:
        """Its summary, from the lines opened so far (a final one wins over one before it)."""
        return self._known.get(session_id)

    def known(self) -> list[Summary]:
        return list(self._known.values())

    def note(self, summary: Summary) -> None:
        self._known[summary.session_id] = summary

    def _open(self, n: int, line: tuple[str, str, bytes]) -> None:
        self._lines[n] = None
        low, high, sealed = line
        try:
            plain = unseal(
                self._key,
                unb64(sealed.decode("ascii", "replace"), ValueError, "line"),
                f"{INDEX_AD.decode()} {low} {high}".encode(),
            )
            summaries = [Summary(*row) for row in json.loads(plain)]
        except (InvalidTag, ValueError, TypeError):
            self.unopened += 1
            return
        for s in summaries:
            had = self._known.get(s.session_id)
            if (had is None or not had.final) and low <= s.session_id <= high:
                self._known[s.session_id] = s
