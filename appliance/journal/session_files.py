"""One encrypted, hash-chained journal file per chat session: `<state>/journal/<session_id>.journal`.

Writing: each record is sealed with the session's data key (key id `journal/<session_id>`),
appended, fsynced, and only then is the vault's sealed head (last seq, hash of that frame) moved.
A crash between the two leaves a valid record past the head: `verify_session` accepts it and reports it as
unsealed (no one without the key can forge a record, so an authentic record past the head can
only be ours). A failed append (disk full, RLIMIT_FSIZE, permissions) cuts the file back to its
last whole record and raises `JournalWriteFailed`: every earlier record stays readable.

Reading: `verify_session` walks the frames and names the first break and its kind (see frames.Break);
the sealed head catches a cut-off tail that the chain alone cannot see. What the vault and the
folder say together:
- a key and a file: the file is walked and held against the sealed head;
- a key, no file, no sealed head: never written (a crash between recording the key and creating
  the file, `Journal.create`): no record was ever sealed, so none is missing;
- a key, no file, a sealed head: deleted (the head says records existed);
- a file, no key and no erase record: orphan. Only a vault that is older than the journal file
  (an older copy put back) or a planted file gives that: refused like any break;
- an erase record and a file: the ciphertext an interrupted erase left (`Erased`, exit 6).
An older copy of the whole directory, journal files included, leaves none of these traces:
only the vault's generation shows it (docs/procedures.md, section 1).
"""

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import __version__, utc
from ..errors import EnvironmentRefused, NotFound, Refused
from ..fsutil import fsync_dir
from ..vault import Vault, zeroize
from . import frames, index
from .frames import Break
from .index import JOURNAL_DIR

# `regenerate` and `edit` take the last exchange out of what the model sees; each keeps the text it
# replaced, and the new exchange follows as ordinary `message` records. `resume` is only ever a
# session's first record: it links the session continued and its sealed head (journal/resume.py).
KINDS = ("message", "overlay-toggle", "control-toggle", "kill", "trust-change", "regenerate", "edit", "resume", "base-switch")
JOURNAL_KEYS = "journal/"  # the prefix of the sessions' data key ids
SUFFIX = ".journal"


class JournalWriteFailed(Refused):
    """A record could not be made durable; the appliance refuses to go on unjournaled."""


class JournalBroken(Refused):
    def __init__(self, session_id: str, broken_at: Break):
        super().__init__(f"journal {session_id} is broken at {broken_at}")
        self.session_id, self.broken_at = session_id, broken_at


def session_key_id(session_id: str) -> str:
    return f"{JOURNAL_KEYS}{session_id}"


def relative_path(session_id: str) -> str:
    return f"{JOURNAL_DIR}/{session_id}{SUFFIX}"


def new_session_id() -> str:
    """Sortable by creation: the UTC time to the second, then random."""
    return utc.now().strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(4)


class Journal:
    """The writer of one session. Holds the data key (zeroed by `close`) and an O_APPEND descriptor."""

    def __init__(self, vault: Vault, session_id: str, key: bytearray, fd: int, seq: int, prev: bytes, size: int):
        self.vault, self.session_id = vault, session_id
        self._key, self._fd, self._seq, self._prev, self._size = key, fd, seq, prev, size
        # A new session summarises itself in the index until its first message (`index` rule 1); a session
        # reopened (a test's writer) or one without an index key leaves that to the listing (rule 2).
        self._index_key: bytearray | None = None
        self._first: list[dict] = []

    @classmethod
    def create(cls, vault: Vault) -> "Journal":
        session_id = new_session_id()
        path = vault.home / relative_path(session_id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        key = vault.new_data_key(session_key_id(session_id), files=[relative_path(session_id)])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            os.fsync(fd)
            fsync_dir(path.parent)
        except OSError as e:
            zeroize(key)
            raise JournalWriteFailed(f"cannot create journal {path}: {e.strerror}") from None
        journal = cls(vault, session_id, key, fd, 0, frames.ZERO_HASH, 0)
        journal._index_key = index.index_key(vault)
        return journal

    def append(self, kind: str, **fields) -> int:
        """Seal, append, fsync, move the sealed head. Returns the record's seq (its number, from 1)."""
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        record = {"kind": kind, "time": utc.format_precise(utc.now()), "appliance_version": __version__, **fields}
        seq = self._seq + 1
        head = frames.header(self.session_id, seq, self._prev)
        nonce = os.urandom(frames.NONCE_BYTES)  # random, never seq: a retried seq after a failed write must not reuse a nonce
        raw = frames.frame(head, nonce, AESGCM(self._key).encrypt(nonce, json.dumps(record).encode(), head))
        path = self.vault.home / relative_path(self.session_id)
        try:
            view = memoryview(raw)
            while view:  # os.write may stop short at a size limit; the next call then raises
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as e:
            self._cut_back()
            raise JournalWriteFailed(f"journal write failed ({e.strerror}): {path}; records 1..{self._seq} are intact") from None
        self._seq, self._prev, self._size = seq, hashlib.sha256(raw).digest(), self._size + len(raw)
        try:
            self.vault.seal_head(session_key_id(self.session_id), seq, self._prev.hex())
        except EnvironmentRefused as e:
            raise JournalWriteFailed(
                f"record {seq} is written but its sealed head is not ({e}); verify reports it as unsealed"
            ) from None
        self._summarise(record)
        return seq

    def _summarise(self, record: dict) -> None:
        """The session's summary in the index, at each record up to its first message (`index` rule 1)."""
        if self._index_key is None:
            return
        self._first.append(record)
        summary = index.summarise(self.session_id, self._first)
        try:
            index.add(self.vault.home, self._index_key, [summary])
        except OSError:
            pass  # the journal holds it: the next listing reads it from there (`index` rule 2)
        if summary.final:
            zeroize(self._index_key)
            self._index_key, self._first = None, []

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        zeroize(self._key)
        if self._index_key is not None:
            zeroize(self._index_key)
            self._index_key = None

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError:
            # Even if the partial frame cannot be cut off, records 1..seq stay intact in front
            # of it; `verify_session` then reports the partial tail as truncated at seq+1.
            return


@dataclass
class Report:
    session_id: str
    records: list[dict] = field(default_factory=list)  # decrypted, in order, up to the break
    broken_at: Optional[Break] = None
    sealed: int = 0  # records covered by the vault's sealed head; more is an interrupted append
    never_written: bool = False  # its key was recorded, its file never made, no record sealed

    @property
    def ok(self) -> bool:
        return self.broken_at is None

    @property
    def unsealed(self) -> int:
        """Records written after the last sealed head: an interrupted append."""
        return len(self.records) - self.sealed


def verify_session(vault: Vault, session_id: str) -> Report:
    """Decrypt and verify one session; breaks are reported. Erased propagates, and NotFound when there is no file either."""
    if not frames.SESSION_ID.fullmatch(session_id):
        raise NotFound(f"not a journal session id: {session_id!r}")
    path = vault.home / relative_path(session_id)
    try:
        key = vault.data_key(session_key_id(session_id))
    except NotFound:
        if not path.exists():
            raise
        why = "the vault holds neither its key nor an erase record: the vault is older than this file (a copy put back), or the file was planted"
        return Report(session_id, broken_at=Break(1, "orphan", why))
    try:
        head = vault.head(session_key_id(session_id))
        head_seq, head_hash = head or (0, frames.ZERO_HASH.hex())
        report = Report(session_id, sealed=head_seq)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if head is None:
                report.never_written = True
            else:
                report.broken_at = Break(1, "deleted", f"the session file is missing (the vault sealed {head_seq} records)")
            return report
        found, tail = frames.split(data)
        report.broken_at = _walk(AESGCM(key), session_id, found, report.records)
        if report.broken_at is None:
            report.broken_at = tail or _against_head(found, head_seq, head_hash)
        return report
    finally:
        zeroize(key)


def read_session(vault: Vault, session_id: str) -> list[dict]:
    """The records of an intact session; JournalBroken (exit 3) otherwise."""
    report = verify_session(vault, session_id)
    if report.broken_at is not None:
        raise JournalBroken(session_id, report.broken_at)
    return report.records


def sessions(vault: Vault) -> list[str]:
    """Session ids the vault holds keys for, plus stray files (whose check then says what they are), oldest first."""
    ids = {i[len(JOURNAL_KEYS) :] for i in vault.key_ids(JOURNAL_KEYS)}
    try:
        names = os.listdir(vault.home / JOURNAL_DIR)
    except FileNotFoundError:
        names = []
    stray = {n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX)} - ids  # the files of recorded sessions need no check
    return sorted(ids | {sid for sid in stray if frames.SESSION_ID.fullmatch(sid)})


def _walk(aead: AESGCM, session_id: str, found: list[frames.Frame], out: list[dict]) -> Optional[Break]:
    claimed = {f.seq for f in found if f.session_id == session_id}
    strangers = {f.session_id for f in found if f.session_id != session_id}
    prev = frames.ZERO_HASH
    for n, f in enumerate(found, 1):
        if f.session_id != session_id:
            if n == 1 and not claimed and len(strangers) == 1:
                return Break(1, "replaced", f"the file holds the records of session {f.session_id}")
            return Break(n, "foreign", f"a record of session {f.session_id}")
        try:
            plain = aead.decrypt(f.nonce, f.ciphertext, f.header)
        except InvalidTag:
            return Break(n, "modified", "failed authentication")
        if f.seq != n:
            if f.seq > n and n not in claimed:
                return Break(n, "deleted", f"record {n} is missing (the next one found is {f.seq})")
            return Break(n, "reordered", f"record {f.seq} stands where record {n} belongs")
        if f.prev_hash != prev:
            return Break(n, "modified", f"does not chain to record {n - 1}")
        out.append(json.loads(plain))  # authentic: we wrote this JSON ourselves
        prev = hashlib.sha256(f.raw).digest()
    return None


def _against_head(found: list[frames.Frame], head_seq: int, head_hash: str) -> Optional[Break]:
    if len(found) < head_seq:
        return Break(len(found) + 1, "truncated", f"the sealed head says {head_seq} records, the file ends after {len(found)}")
    if head_seq and hashlib.sha256(found[head_seq - 1].raw).hexdigest() != head_hash:
        return Break(head_seq, "modified", "differs from the record sealed in the vault")
    return None
