"""Installed artifacts at rest: every version's encrypted under its own data key (overlays, control vectors, base models).

Rules:
- A version's artifacts are encrypted (`vault.stream`, chunked AES-256-GCM) under one data
  key, key id `data_key_id(kind, name, version)`, while they are hashed on the way in from the bundle:
  the bytes hashed are the bytes encrypted, and no plaintext byte of an installed item is written anywhere.
- Each file's context binds it to its key id, its accepted manifest and its path: a ciphertext moved to
  another path, version or manifest fails authentication even under the right key.
- Reading decrypts into memory only and re-hashes the plaintext against the accepted manifest before
  anyone uses it; decrypted buffers are zeroed as soon as their user is done with them.
- A base model may be proprietary (docs/design.md, "Keys, encryption at rest"): its GGUF is decrypted,
  and hashed in the same pass, into a sealed memfd (`decrypt_to_memfd`), anonymous memory that llama.cpp
  opens by its /proc/self/fd path; the embedded default alone stays public, pinned and in the clear.
"""

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, overload

from ..errors import HashMismatch, NotFound, SizeMismatch
from ..trust.hashing import Progress, Readable, sha256_stream
from ..trust.manifest import Artifact, Manifest
from ..vault import EncryptedWriter, Vault, decrypt_chunks, random_key, zeroize
from .layout import STORE_DIR

OVERLAY_KEYS = "overlay/"  # the prefix of the overlays' data key ids
BASE_KEYS = "base/"  # and of the imported base models'
CONTROL_KEYS = "control/"  # and of the control vectors'
KEY_ID_PREFIXES = {"overlay": OVERLAY_KEYS, "base-model": BASE_KEYS, "control-vector": CONTROL_KEYS}
MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def overlay_key_id(name: str, version: int) -> str:
    """The vault key id of one installed overlay version."""
    return f"{OVERLAY_KEYS}{name}/{version}"


def data_key_id(kind: str, name: str, version: int) -> str:
    """The vault key id of one installed version of any kind."""
    return f"{KEY_ID_PREFIXES[kind]}{name}/{version}"


def is_encrypted(manifest: Manifest) -> bool:
    return manifest.kind in KEY_ID_PREFIXES


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

    def context(self, path: str) -> bytes:
        return f"{self.key_id}\0{self.manifest.sha256}\0{path}".encode()

    def zeroize(self) -> None:
        if self.key is not None:
            zeroize(self.key)


def write_artifact(src: Readable, dest: Path, path: str, sealing: Sealing, progress: Optional[Progress]) -> tuple[str, int]:
    """Copy one artifact from the bundle to `dest`, encrypted if its kind says so; returns (sha256, size) of the plaintext."""
    with open(dest, "wb") as out:
        if sealing.key is None:
            digest, size = sha256_stream(src, progress, sink=out)
        else:
            writer = EncryptedWriter(sealing.key, out, sealing.context(path))
            digest, size = sha256_stream(src, progress, sink=writer)
            writer.close()
        out.flush()
        os.fsync(out.fileno())
    return digest, size


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
        for chunk in decrypt_chunks(sealing.key, path, sealing.context(artifact.path)):
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


def decrypt_to_memfd(directory: Path, artifact: Artifact, sealing: Sealing, progress: Optional[Progress] = None) -> int:
    """One installed, encrypted artifact decrypted into a sealed memfd, hashed in the same pass; returns the fd.

    The memfd is anonymous memory (never a file on disk), sealed against writes once checked, so the
    bytes a loader reads through /proc/self/fd/N are the bytes hashed. It is close-on-exec: a child
    gets it only when passed on purpose. The caller closes it.
    """
    path = directory / "artifacts" / artifact.path
    if not path.is_file():
        raise NotFound(f"{artifact.path}: missing from the store")
    if sealing.key is None:
        raise ValueError("only encrypted artifacts are decrypted into memory")
    fd = os.memfd_create(f"appliance:{sealing.key_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        h, size = hashlib.sha256(), 0
        for chunk in decrypt_chunks(sealing.key, path, sealing.context(artifact.path)):
            h.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if progress is not None:
                progress(len(chunk))
        _check(artifact, size, h.hexdigest())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, MEMFD_SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(artifact: Artifact, size: int, digest: str) -> None:
    if size != artifact.size:
        raise SizeMismatch(artifact.path, artifact.size, size)
    if digest != artifact.sha256:
        raise HashMismatch(artifact.path, artifact.sha256, digest)
