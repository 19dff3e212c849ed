"""Chunked AES-256-GCM for files at rest (overlays): the STREAM construction over `cryptography`'s AESGCM.

    header  = b"APPLENC1" | u32 chunk_size | 7-byte random nonce prefix          (19 bytes)
    chunk i = AESGCM(key).encrypt(prefix | u32 i | u8 last, plaintext_i, header | context)

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last holds 0..chunk_size
and is the only one sealed with last=1. Hence:
- swapped or moved chunks fail (the index is in the nonce);
- a file cut at a chunk boundary ends in a chunk sealed with last=0 and fails; bytes appended fail;
- a changed header fails (it is associated data); `context` (say, the key id) binds the ciphertext
  to what it is, so a file copied in under another id fails too.

Rules: one fresh data key per key id (from `Vault.new_data_key` or `random_key`); the few files under one
key id (an overlay version's artifacts) share it and are kept apart by their random nonce prefix and
their `context`. Plaintext is never written to disk by this module; decryption yields chunks the
caller zeroes when done (see `vault.zeroize`).
"""

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import Refused
from .aead import zeroize

MAGIC = b"APPLENC1"
HEADER = struct.Struct(">8sI7s")
NONCE_TAIL = struct.Struct(">IB")  # chunk index, last flag
TAG_BYTES = 16
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20  # a header asking for more is refused, not allocated
MAX_CHUNKS = 1 << 32


class CiphertextRejected(Refused):
    """An encrypted file failed authentication: modified, reordered, truncated, or the wrong key."""


class EncryptedWriter:
    """A write-only sink: plaintext in, ciphertext to `dst`; `close()` seals the last chunk.

    Fits `trust.hashing.sha256_stream(src, sink=EncryptedWriter(key, dst, context))`: the bytes
    hashed from the USB stick are exactly the bytes encrypted into the store. It does not hash
    itself: the caller already does, and a second SHA-256 would halve import throughput.
    """

    def __init__(self, key: bytes | bytearray, dst: BinaryIO, context: bytes = b"", chunk_size: int = CHUNK_BYTES):
        if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_size out of range: {chunk_size}")
        self._aead = AESGCM(key)
        self._prefix = os.urandom(7)  # with one key per file this is belt and braces; it costs nothing
        header = HEADER.pack(MAGIC, chunk_size, self._prefix)
        self._ad = header + context
        self._dst, self._chunk = dst, chunk_size
        self._buf = bytearray()
        self._index, self._size = 0, 0
        dst.write(header)

    def write(self, data) -> int:
        self._size += len(data)
        self._buf += data
        # Strictly more than one chunk: a full chunk stays pending because it may turn out to be the last.
        while len(self._buf) > self._chunk:
            self._emit(memoryview(self._buf)[: self._chunk], last=False)
            del self._buf[: self._chunk]
        return len(data)

    def close(self) -> int:
        """Seal the last chunk; returns the plaintext size."""
        self._emit(self._buf, last=True)
        zeroize(self._buf)
        return self._size

    def _emit(self, plain, last: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise Refused("file too large for one encrypted stream")
        nonce = self._prefix + NONCE_TAIL.pack(self._index, int(last))
        self._dst.write(self._aead.encrypt(nonce, plain, self._ad))
        self._index += 1


def decrypt_chunks(key: bytes | bytearray, path: Path, context: bytes = b"") -> Iterator[bytes]:
    """The plaintext of `path`, one authenticated chunk at a time (for hashing a file without holding it).

    Each chunk is authentic when yielded, but the file is whole only once the iteration ends without
    CiphertextRejected (a cut-off tail is caught at the last chunk): act on nothing before that.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CiphertextRejected(f"{path}: cannot read: {e.strerror}") from None
    with f:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            raise CiphertextRejected(f"{path}: truncated header")
        magic, chunk_size, prefix = HEADER.unpack(header)
        if magic != MAGIC or not 1 <= chunk_size <= MAX_CHUNK_BYTES:
            raise CiphertextRejected(f"{path}: not an encrypted appliance file")
        body = os.fstat(f.fileno()).st_size - HEADER.size
        full, rest = divmod(body, chunk_size + TAG_BYTES)
        if body == 0 or 0 < rest < TAG_BYTES:
            raise CiphertextRejected(f"{path}: truncated")
        count = full + (1 if rest else 0)
        if count > MAX_CHUNKS:
            raise CiphertextRejected(f"{path}: too many chunks")
        aead, ad = AESGCM(key), header + context
        for index in range(count):
            sealed = f.read(chunk_size + TAG_BYTES)
            nonce = prefix + NONCE_TAIL.pack(index, int(index == count - 1))
            try:
                yield aead.decrypt(nonce, sealed, ad)
            except InvalidTag:
                raise CiphertextRejected(
                    f"{path}: chunk {index} failed authentication (modified, reordered, truncated, or under another data key)"
                ) from None
