"""Chunked AES-256-GCM for files at rest (overlays, control vectors, bases): the STREAM construction
over `cryptography`'s AESGCM, under a key of the file's own (HKDF of the data key), as Tink's
AES-GCM-HKDF streaming AEAD and age do.

    header   = b"APPLENC2" | u32 chunk_size | salt (32 random bytes) | nonce prefix (7 random bytes)   (51 bytes)
    file key = HKDF-SHA256(data key, salt, info = FILE_KEY_INFO | context)
    chunk i  = AESGCM(file key).encrypt(prefix | u32 i | u8 last, plaintext_i, header | context)

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last holds 0..chunk_size
and is the only one sealed with last=1. Hence:
- swapped or moved chunks fail (the index is in the nonce);
- a file cut at a chunk boundary ends in a chunk sealed with last=0 and fails; bytes appended fail;
- a changed header fails (it is associated data, and the salt picks the key); `context` (the key
  id, the manifest, the path) binds the ciphertext to what it is, so a file copied in under another
  id fails too.

Rules: one fresh data key per key id (from `Vault.new_data_key` or `random_key`); the few files
under one key id (a version's artifacts) share it, and each file is sealed under its own key,
derived from it with a random 256-bit salt: nonces of different files never meet under one AES key,
whatever their random prefixes (associated data alone would not keep them apart). Files written in
format 1 (`APPLENC1`: the data key itself, a 7-byte random prefix) are still read; only format 2
is written. Plaintext is never written to disk by this module; decryption yields chunks the caller
zeroes when done (see `vault.zeroize`).
"""

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import Refused
from .aead import KEY_BYTES, secret, zeroize

MAGIC = b"APPLENC2"
MAGIC_1 = b"APPLENC1"  # format 1: no salt, the data key seals the chunks itself
HEADER = struct.Struct(">8sI32s7s")
HEADER_1 = struct.Struct(">8sI7s")
FILE_KEY_INFO = b"appliance stream file key\0"
NONCE_TAIL = struct.Struct(">IB")  # chunk index, last flag
TAG_BYTES = 16
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20  # a header asking for more is refused, not allocated
MAX_CHUNKS = 1 << 32


def file_key(key: bytes | bytearray, salt: bytes, context: bytes) -> bytearray:
    """The key one file is sealed under: HKDF-SHA256 of the data key over the file's salt and context."""
    return secret(HKDF(SHA256(), KEY_BYTES, salt, FILE_KEY_INFO + context).derive(key))  # a bytearray is read in place


def sealed_size(plain: int, chunk_size: int = CHUNK_BYTES) -> int:
    """Bytes on disk of `plain` bytes sealed by `EncryptedWriter` (an empty file still has its one last chunk)."""
    return HEADER.size + plain + max(1, -(-plain // chunk_size)) * TAG_BYTES


class CiphertextRejected(Refused):
    """An encrypted file failed authentication: modified, reordered, truncated, or the wrong key."""


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


class EncryptedWriter:
    """A write-only sink: plaintext in, ciphertext to `dst`; `close()` seals the last chunk.

    A stage of `store.pipeline.stream` beside the SHA-256 stage: the bytes hashed from the USB stick
    are exactly the buffers encrypted into the store. It does not hash itself: the caller already
    does, and a second SHA-256 would halve import throughput.
    """

    def __init__(self, key: bytes | bytearray, dst: Writable, context: bytes = b"", chunk_size: int = CHUNK_BYTES):
        if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_size out of range: {chunk_size}")
        salt, self._prefix = os.urandom(32), os.urandom(7)
        sealing = file_key(key, salt, context)
        self._aead = AESGCM(sealing)
        zeroize(sealing)
        header = HEADER.pack(MAGIC, chunk_size, salt, self._prefix)
        self._ad = header + context
        self._dst, self._chunk = dst, chunk_size
        # One chunk of plaintext waiting to be sealed (a full one may turn out to be the last) and one
        # sealed chunk, both reused: a byte is copied once on its way in, then encrypted in place.
        self._pending, self._fill = bytearray(chunk_size), 0
        self._sealed = bytearray(chunk_size + TAG_BYTES)
        self._index, self._size = 0, 0
        dst.write(header)

    def write(self, data) -> int:
        view = memoryview(data)
        self._size += len(view)
        while view:
            if self._fill == self._chunk:  # full, and more follows: not the last
                self._emit(last=False)
            n = min(len(view), self._chunk - self._fill)
            self._pending[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
        return len(data)

    def close(self) -> int:
        """Seal the last chunk; returns the plaintext size."""
        self._emit(last=True)
        zeroize(self._pending)
        return self._size

    def _emit(self, last: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise Refused("file too large for one encrypted stream")
        nonce = self._prefix + NONCE_TAIL.pack(self._index, int(last))
        sealed = memoryview(self._sealed)[: self._fill + TAG_BYTES]
        self._aead.encrypt_into(nonce, memoryview(self._pending)[: self._fill], self._ad, sealed)
        self._dst.write(sealed)
        self._index, self._fill = self._index + 1, 0


def decrypt_chunks(key: bytes | bytearray, path: Path, context: bytes = b"") -> Iterator[bytes]:
    """The plaintext of `path`, one authenticated chunk at a time, each a bytes object of its own (see `decrypt_views`)."""
    return (bytes(view) for view in decrypt_views(key, path, context))


def decrypt_views(key: bytes | bytearray, path: Path, context: bytes = b"") -> Iterator[memoryview]:
    """The plaintext of `path`, one authenticated chunk at a time (for hashing a file without holding it).

    Each chunk is a view of one buffer, reused and valid only until the next is asked for; the buffer
    is zeroed when the iteration ends. The file is whole only once the iteration ends without
    CiphertextRejected (see `DecryptingReader`).
    """
    with DecryptingReader(key, path, context) as reader:
        plain = bytearray(reader.chunk_size)
        try:
            while n := reader.readinto(plain):
                yield memoryview(plain)[:n]
        finally:
            zeroize(plain)


class DecryptingReader:
    """An encrypted file read as its plaintext: `readinto(buffer)` decrypts the next chunk straight into the
    caller's buffer (at least `chunk_size` bytes; no allocation per chunk, so a multi-GB base decrypts at the
    cipher's pace) and returns its length, 0 once the last chunk is in.

    Each chunk is authentic when it is returned, but the file is whole only once `readinto` has returned 0
    without CiphertextRejected (a cut-off tail is caught at the last chunk): act on nothing before that.
    """

    def __init__(self, key: bytes | bytearray, path: Path, context: bytes = b""):
        try:
            self._file = open(path, "rb", buffering=0)
        except OSError as e:
            raise CiphertextRejected(f"{path}: cannot read: {e.strerror}") from None
        try:
            self._open(key, path, context)
        except BaseException:
            self._file.close()
            raise

    def _open(self, key: bytes | bytearray, path: Path, context: bytes) -> None:
        f, self._path = self._file, path
        magic = f.read(len(MAGIC))
        layout = HEADER if magic == MAGIC else HEADER_1 if magic == MAGIC_1 else None
        header = magic + f.read(layout.size - len(magic)) if layout is not None else magic
        if layout is None or len(header) < layout.size:
            raise CiphertextRejected(f"{path}: not an encrypted appliance file, or a truncated header")
        if layout is HEADER:
            _, chunk_size, salt, self._prefix = HEADER.unpack(header)
            sealing = file_key(key, salt, context)
        else:
            _, chunk_size, self._prefix = HEADER_1.unpack(header)
            sealing = secret(key)
        self._aead, self._ad = AESGCM(sealing), header + context
        zeroize(sealing)
        if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
            raise CiphertextRejected(f"{path}: not an encrypted appliance file")
        body = os.fstat(f.fileno()).st_size - layout.size
        full, rest = divmod(body, chunk_size + TAG_BYTES)
        if body == 0 or 0 < rest < TAG_BYTES:
            raise CiphertextRejected(f"{path}: truncated")
        self._count = full + (1 if rest else 0)
        if self._count > MAX_CHUNKS:
            raise CiphertextRejected(f"{path}: too many chunks")
        self.chunk_size, self._index = chunk_size, 0
        self._sealed = memoryview(bytearray(chunk_size + TAG_BYTES))

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self._index == self._count:
            return 0
        n = self._file.readinto(self._sealed)
        if n is None or n < TAG_BYTES:
            raise CiphertextRejected(f"{self._path}: truncated while it was read")
        nonce = self._prefix + NONCE_TAIL.pack(self._index, int(self._index == self._count - 1))
        try:
            self._aead.decrypt_into(nonce, self._sealed[:n], self._ad, memoryview(buffer)[: n - TAG_BYTES])
        except InvalidTag:
            raise CiphertextRejected(
                f"{self._path}: chunk {self._index} failed authentication (modified, reordered, truncated, or under another data key)"
            ) from None
        self._index += 1
        return n - TAG_BYTES

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "DecryptingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
