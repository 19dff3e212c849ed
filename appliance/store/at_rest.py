"""Installed artifacts at rest: every version's encrypted under its own data key (overlays, control vectors, base models).

Rules:
- A version's artifacts are encrypted (`vault.stream`, chunked AES-256-GCM) under one data
  key, key id `data_key_id(kind, name, version)`, while they are hashed on the way in from the bundle:
  the bytes hashed are the bytes encrypted, and no plaintext byte of an installed item is written anywhere.
- Each file's context binds it to its key id, its accepted manifest and its path: a ciphertext moved to
  another path, version or manifest fails authentication even under the right key.
- Reading decrypts into memory only and re-hashes the plaintext against the accepted manifest before
  anyone uses it; decrypted buffers are zeroed as soon as their user is done with them.
- A base model may be proprietary (docs/design.md, "Keys, encryption at rest"): its GGUF is decrypted
  into a sealed memfd (`decrypt_to_memfd`), anonymous memory that llama.cpp opens by its /proc/self/fd
  path; the embedded default alone stays public, pinned and in the clear. A start trusts the AEAD tags
  alone (`Check.TAGS`): every chunk authenticated under the version's data key and this file's context,
  in order, the last one sealed as last, and the size the manifest's; that key only ever sealed bytes
  hashed against the signed manifest at import. `verify` and `base use` re-hash too (`Check.SHA256`).
"""

import fcntl
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal, Optional, Protocol, overload

from ..errors import HashMismatch, NotFound, SizeMismatch
from ..trust.hashing import Progress, Readable, sha256_stream
from ..trust.kinds import KINDS
from ..trust.manifest import Artifact, Manifest
from ..vault import DecryptingReader, EncryptedWriter, Vault, decrypt_views, random_key, sealed_size, zeroize
from .layout import STORE_DIR
from .pipeline import Call, Stage, stream

MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def data_key_id(kind: str, name: str, version: int) -> str:
    """The vault key id of one installed version of any kind."""
    return f"{KINDS[kind].keys}{name}/{version}"


def is_encrypted(manifest: Manifest) -> bool:
    return KINDS[manifest.kind].encrypted


def artifact_rel(manifest_sha256: str, path: str) -> str:
    """Where an installed artifact lives, relative to the state dir (the vault records these for erase)."""
    return f"{STORE_DIR}/objects/{manifest_sha256}/artifacts/{path}"


@dataclass
class Sealing:
    """How one version's artifacts are kept: under `key` (None: in the clear) for key id `key_id`."""

    manifest: Manifest
    key: Optional[bytearray]

    @property
    def key_id(self) -> str:
        return data_key_id(self.manifest.kind, self.manifest.name, self.manifest.version)

    @classmethod
    def fresh(cls, manifest: Manifest) -> "Sealing":
        """For an import: a new key, in memory only until the import commits (see `record`)."""
        return cls(manifest, random_key() if is_encrypted(manifest) else None)

    @classmethod
    def installed(cls, vault: Vault, manifest: Manifest) -> "Sealing":
        """For a load: the version's data key from the vault (Erased, exit 6, once crypto-erased)."""
        key_id = data_key_id(manifest.kind, manifest.name, manifest.version) if is_encrypted(manifest) else None
        return cls(manifest, vault.data_key(key_id) if key_id else None)

    def record(self, vault: Vault) -> None:
        """Make the key durable in the vault, with the ciphertext paths crypto-erase must delete.

        `replace`: the importer only records a version above every version ever accepted, so a key
        already under this id can only be the orphan of an import killed before its commit.
        """
        if self.key is not None:
            files = [artifact_rel(self.manifest.sha256, a.path) for a in self.manifest.artifacts]
            vault.record_data_key(self.key_id, self.key, files, replace=True)

    def stored_size(self, artifact: Artifact) -> int:
        """The bytes `write_artifact` puts on disk for `artifact`."""
        return artifact.size if self.key is None else sealed_size(artifact.size)

    def context(self, path: str) -> bytes:
        return f"{self.key_id}\0{self.manifest.sha256}\0{path}".encode()

    def zeroize(self) -> None:
        if self.key is not None:
            zeroize(self.key)


WRITE_BEHIND = 32 << 20  # bytes written between two write-back kicks


class WriteBehind:
    """A file written straight through (no Python buffer) whose pages go to the disk while the import goes on.

    Every `WRITE_BEHIND` bytes, POSIX_FADV_DONTNEED over what was written starts its write-back
    without waiting for it (Linux) and drops the pages already written from the page cache, so
    hashing, encrypting and the probe overlap the disk, whose pace then bounds the import; the
    install's fsync (`importer._fsync_tree`) waits for what is left before the commit point.
    """

    def __init__(self, dest: Path):
        self._fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._written = self._kicked = 0

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written - self._kicked >= WRITE_BEHIND:
            self._kick()
        return len(data)

    def _kick(self) -> None:
        os.posix_fadvise(self._fd, self._kicked, self._written - self._kicked, os.POSIX_FADV_DONTNEED)
        self._kicked = self._written

    def close(self) -> None:
        self._kick()
        os.close(self._fd)


class PlainMemfd:
    """A sink of plaintext into anonymous memory, sealed against every change before anyone reads it.

    llama.cpp opens it by its /proc/self/fd path; it is close-on-exec, so a child gets it only when
    passed on purpose. `sealed()` hands the fd to the caller, who closes it; `close()` drops it on failure.
    """

    def __init__(self, name: str):
        self.fd = os.memfd_create(f"appliance:{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def sealed(self) -> int:
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, MEMFD_SEALS)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


class Hashed:
    """The SHA-256 stage of a copy (`pipeline.stream`): each buffer hashed; at the end the size and digest
    checked against `artifact`, then `checked()` called (the probe is told the file is whole only once its
    bytes are the signed ones)."""

    def __init__(self, artifact: Artifact, checked: Callable[[], None] = lambda: None):
        self._artifact, self._checked = artifact, checked
        self._digest, self.size = hashlib.sha256(), 0

    def write(self, data: memoryview) -> None:
        self._digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        _check(self._artifact, self.size, self._digest.hexdigest())
        self._checked()


class ProbeCopy(Stage, Protocol):
    """A stage that takes a base's plaintext for its probe (`bases.StagedProbe`), told when the hash is checked."""

    def hash_checked(self) -> None: ...


def write_artifact(
    src: Readable,
    dest: Path,
    artifact: Artifact,
    sealing: Sealing,
    progress: Optional[Progress],
    probe: Optional[ProbeCopy] = None,
) -> None:
    """Copy one artifact from the bundle to `dest`, encrypted if its kind says so, its size and SHA-256 checked.

    The read, the hash and the write (or the encryption and the write) run in parallel (`pipeline`). With
    `probe` (a base's GGUF), the plaintext goes there too, from the very buffers that are hashed, on a
    thread of its own; it is told when the hash is checked, and may start while the encryption runs. Not
    fsynced here: the install fsyncs the whole staging tree.
    """
    out = WriteBehind(dest)
    try:
        store: Stage = (
            Call(out.write) if sealing.key is None else EncryptedWriter(sealing.key, out, sealing.context(artifact.path))
        )
        if probe is None:
            stream(src, [Hashed(artifact), store], progress)
        else:
            stream(src, [Hashed(artifact, probe.hash_checked), probe, store], progress)
    finally:
        out.close()


@overload
def read_artifact(
    directory: Path, artifact: Artifact, sealing: Sealing, keep: Literal[True], progress: Optional[Progress] = None
) -> bytearray: ...
@overload
def read_artifact(
    directory: Path, artifact: Artifact, sealing: Sealing, keep: Literal[False], progress: Optional[Progress] = None
) -> None: ...
def read_artifact(
    directory: Path, artifact: Artifact, sealing: Sealing, keep: bool, progress: Optional[Progress] = None
) -> Optional[bytearray]:
    """One installed artifact, its size and SHA-256 checked against the manifest; its verified bytes when `keep`.

    An encrypted artifact is decrypted into memory only (CiphertextRejected, exit 3, if any byte of
    it changed); one that is not kept is hashed chunk by chunk and never held whole.
    """
    path = directory / "artifacts" / artifact.path
    if not path.is_file():
        raise NotFound(f"{artifact.path}: missing from the store")
    if sealing.key is None:
        if keep:
            raise ValueError("only encrypted artifacts are read into memory")
        with open(path, "rb", buffering=0) as f:
            digest, size = sha256_stream(f, progress)
        _check(artifact, size, digest)
        return None
    data = bytearray() if keep else None
    try:
        h, size = hashlib.sha256(), 0
        for chunk in decrypt_views(sealing.key, path, sealing.context(artifact.path)):
            h.update(chunk)
            size += len(chunk)
            if data is not None:
                data += chunk
            if progress is not None:
                progress(len(chunk))
        _check(artifact, size, h.hexdigest())
    except BaseException:
        if data is not None:
            zeroize(data)
        raise
    return data


class Check(Enum):
    """How much `decrypt_to_memfd` checks beyond the AEAD tags, which authenticate every byte either way."""

    TAGS = "tags"  # a start, and the probe of what was just hashed on the way in
    SHA256 = "sha256"  # `verify` and `base use`: the plaintext re-hashed against the accepted manifest too


def decrypt_to_memfd(
    directory: Path, artifact: Artifact, sealing: Sealing, check: Check, progress: Optional[Progress] = None
) -> int:
    """One installed, encrypted artifact decrypted into a sealed memfd, its size (and, by `check`, its
    SHA-256) checked against the manifest in the same pass; returns the fd.

    The memfd is anonymous memory (never a file on disk), sealed against writes once checked, so the
    bytes a loader reads through /proc/self/fd/N are the bytes authenticated. It is close-on-exec: a
    child gets it only when passed on purpose. The caller closes it.
    """
    path = directory / "artifacts" / artifact.path
    if not path.is_file():
        raise NotFound(f"{artifact.path}: missing from the store")
    if sealing.key is None:
        raise ValueError("only encrypted artifacts are decrypted into memory")
    memfd = PlainMemfd(sealing.key_id)
    try:
        with DecryptingReader(sealing.key, path, sealing.context(artifact.path)) as reader:
            # the decryption here, the memfd's writes (and the hash) on threads of their own
            stages: list[Stage] = [Call(memfd.write)]
            if check is Check.SHA256:
                stages.append(Hashed(artifact))
            size = stream(reader, stages, progress, chunk=reader.chunk_size)
        if size != artifact.size:
            raise SizeMismatch(artifact.path, artifact.size, size)
        return memfd.sealed()
    except BaseException:
        memfd.close()
        raise


def _check(artifact: Artifact, size: int, digest: str) -> None:
    if size != artifact.size:
        raise SizeMismatch(artifact.path, artifact.size, size)
    if digest != artifact.sha256:
        raise HashMismatch(artifact.path, artifact.sha256, digest)
