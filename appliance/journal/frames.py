"""The journal's on-disk framing: a sequence of length-prefixed, individually sealed records.

    frame  = u32 body_length | body                                   (big-endian)
    body   = header | nonce (12) | AES-256-GCM ciphertext and tag
    header = u8 version (1) | u8 len(session_id) | session_id (ASCII) | u64 seq | prev_hash (32)

The header is the associated data of the record: `session_id || seq || prev_hash`, each with its
length fixed or prefixed so no two headers concatenate alike. `prev_hash` is the SHA-256 of the
previous frame's full bytes (length prefix included); record 1 chains to 32 zero bytes.

Rules: the session id, seq and prev_hash are readable without the key, so a verifier can say
*how* a file broke (which record claims to be where); they are authenticated, so a claim that
was altered fails as "modified". Splitting never raises: a malformed byte stream yields the
frames before it and a `Break` naming the first bad record.
"""

import re
import struct
from dataclasses import dataclass
from typing import Optional

VERSION = 1
LENGTH = struct.Struct(">I")
SEQ = struct.Struct(">Q")
HASH_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ZERO_HASH = bytes(HASH_BYTES)
MAX_BODY = 16 << 20  # a record is one message; anything larger is damage, not data
SESSION_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


@dataclass(frozen=True)
class Break:
    """Where and how a journal stopped being trustworthy. `record` counts from 1."""

    record: int
    kind: str  # modified | deleted | reordered | truncated | foreign | replaced | orphan
    detail: str

    def __str__(self) -> str:
        return f"record {self.record}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Frame:
    raw: bytes  # the full frame, length prefix included: what prev_hash covers
    header: bytes
    session_id: str
    seq: int
    prev_hash: bytes
    nonce: bytes
    ciphertext: bytes


def header(session_id: str, seq: int, prev_hash: bytes) -> bytes:
    sid = session_id.encode("ascii")
    return bytes([VERSION, len(sid)]) + sid + SEQ.pack(seq) + prev_hash


def frame(head: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    body = head + nonce + ciphertext
    return LENGTH.pack(len(body)) + body


def split(data: bytes) -> tuple[list[Frame], Optional[Break]]:
    """All well-formed frames in order, and the break that ended the walk early (None: clean end)."""
    frames: list[Frame] = []
    off = 0
    while off < len(data):
        n = len(frames) + 1
        if len(data) - off < LENGTH.size:
            return frames, Break(n, "truncated", "the file ends inside the record's length prefix")
        (length,) = LENGTH.unpack_from(data, off)
        if length > MAX_BODY:
            return frames, Break(n, "modified", f"impossible record length {length}")
        if off + LENGTH.size + length > len(data):
            return frames, Break(n, "truncated", "the file ends inside the record")
        raw = data[off : off + LENGTH.size + length]
        parsed = _parse(raw)
        if parsed is None:
            return frames, Break(n, "modified", "malformed record header")
        frames.append(parsed)
        off += len(raw)
    return frames, None


def _parse(raw: bytes) -> Optional[Frame]:
    body = raw[LENGTH.size :]
    if len(body) < 2 or body[0] != VERSION:
        return None
    sid_end = 2 + body[1]
    head_end = sid_end + SEQ.size + HASH_BYTES
    if len(body) < head_end + NONCE_BYTES + TAG_BYTES:
        return None
    try:
        sid = body[2:sid_end].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not SESSION_ID.fullmatch(sid):
        return None
    (seq,) = SEQ.unpack_from(body, sid_end)
    return Frame(
        raw=raw,
        header=body[:head_end],
        session_id=sid,
        seq=seq,
        prev_hash=body[sid_end + SEQ.size : head_end],
        nonce=body[head_end : head_end + NONCE_BYTES],
        ciphertext=body[head_end + NONCE_BYTES :],
    )
