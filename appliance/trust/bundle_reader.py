"""Opening a `*.bundle` (an uncompressed tar) from untrusted media, without trusting any of it.

A bundle is admitted for further checks only if every shape rule holds; each
rule is one small function raising its own `Refused` subclass:

1. the file is at most `MAX_BUNDLE_BYTES` (endless data; a tar header cannot
   claim more data than the file holds without being reported truncated);
2. it is a readable tar with at most `MAX_MEMBERS` members, and it ends with
   its end-of-archive marker and nothing else, padded to whole 10240-byte
   records as tar writes them (truncated or half-copied bundles, trailing data);
3. every member is a regular file or a directory: no symlink, hard link,
   device node, FIFO or sparse file;
4. no member name is absolute or has a `..` segment, and no name appears twice
   (tar lets a later copy shadow an earlier one);
5. the only members are `manifest.json`, `signatures/<40-hex>.asc` (at most
   `MAX_SIGNATURES`, each at most `MAX_SIGNATURE_BYTES`), `artifacts/<path>`
   for a listed path, and the directories above them;
6. `manifest.json` is present and admitted by `manifest.parse_manifest`;
7. every artifact the manifest lists is present.

Nothing is extracted to disk here: artifacts are streamed from the tar by
whoever copies them, so the bytes hashed are the bytes kept.
"""

import io
import os
import re
import tarfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import NotFound, Refused
from .manifest import Manifest, check_manifest_size, parse_manifest

MAX_BUNDLE_BYTES = 16 << 30
MAX_MEMBERS = 256
MAX_SIGNATURES = 16
MAX_SIGNATURE_BYTES = 16 * 1024
MAX_TRAILER_BYTES = 2 * tarfile.RECORDSIZE  # end-of-archive zeros plus record padding
MANIFEST_NAME = "manifest.json"
SIGNATURE_RE = re.compile(r"signatures/([0-9A-F]{40})\.asc")
ARTIFACTS_PREFIX = "artifacts/"
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
# Whatever a malformed tar makes the tarfile module raise: all of it is "unreadable".
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, OverflowError)


class BundleTooLarge(Refused):
    pass


class BundleUnreadable(Refused):
    pass


class BundleUnsafeMember(Refused):
    pass


class BundleUnexpectedMember(Refused):
    pass


class BundleMissingMember(Refused):
    pass


@dataclass
class Bundle:
    """An open bundle whose shape and manifest passed; signatures and hashes are not checked yet."""

    path: Path
    manifest: Manifest
    signatures: dict[str, bytes]  # file-name fingerprint -> armoured detached signature
    _tar: tarfile.TarFile = field(repr=False)
    _members: dict[str, tarfile.TarInfo] = field(repr=False)

    def artifact_size(self, path: str) -> int:
        return self._members[ARTIFACTS_PREFIX + path].size

    def open_artifact(self, path: str) -> io.BufferedReader:
        return _extract(self._tar, self._members[ARTIFACTS_PREFIX + path])

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_file_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise BundleTooLarge(f"{path.name}: {size} bytes exceeds the {MAX_BUNDLE_BYTES}-byte bundle cap")


def _check_member_type(m: tarfile.TarInfo) -> None:
    if m.issym():
        raise BundleUnsafeMember(f"member {m.name!r} is a symbolic link")
    if m.islnk():
        raise BundleUnsafeMember(f"member {m.name!r} is a hard link")
    if m.isdev():
        raise BundleUnsafeMember(f"member {m.name!r} is a device node or FIFO")
    if not (m.isdir() or m.type in FILE_TYPES):
        raise BundleUnsafeMember(f"member {m.name!r} is not a regular file or directory")


def _check_member_name(name: str, seen: Collection[str]) -> None:
    if name.startswith("/"):
        raise BundleUnsafeMember(f"member {name!r} has an absolute path")
    if ".." in name.split("/"):
        raise BundleUnsafeMember(f"member {name!r} has a '..' path segment")
    if name in seen:
        raise BundleUnexpectedMember(f"member {name!r} appears twice")


def _check_end_of_archive(path: Path, offset: int) -> None:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(offset)
        tail = f.read(MAX_TRAILER_BYTES + 1)
    whole_records = size % tarfile.RECORDSIZE == 0  # a cut inside the final padding is still a cut
    if not whole_records or len(tail) < 2 * tarfile.BLOCKSIZE or len(tail) > MAX_TRAILER_BYTES or tail.count(0) != len(tail):
        raise BundleUnreadable(f"{path.name}: truncated, or data after the end of the archive")


def _read_members(path: Path, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    while (m := tar.next()) is not None:
        if len(members) >= MAX_MEMBERS:
            raise BundleTooLarge(f"{path.name}: more than {MAX_MEMBERS} members")
        _check_member_type(m)
        _check_member_name(m.name, members.keys())
        members[m.name] = m
    _check_end_of_archive(path, tar.offset)
    return members


def _allowed_dirs(manifest: Manifest) -> set[str]:
    dirs = {"signatures", "artifacts"}
    for a in manifest.artifacts:
        parts = a.path.split("/")
        dirs.update(ARTIFACTS_PREFIX + "/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo) -> io.BufferedReader:
    f = tar.extractfile(m)
    if f is None:  # a member that is not a regular file: rules 3 and 5 refuse it before this
        raise BundleUnreadable(f"member {m.name!r} is not a regular file")
    return cast(io.BufferedReader, f)  # tarfile's ExFileObject, typed as IO[bytes] in the stubs


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    data = _extract(tar, m).read()
    if len(data) != m.size:
        raise BundleUnreadable(f"member {m.name!r} is truncated")
    return data


def _read_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> Manifest:
    m = members.get(MANIFEST_NAME)
    if m is None or not m.isfile():
        raise BundleMissingMember(f"bundle has no {MANIFEST_NAME}")
    check_manifest_size(m.size)
    return parse_manifest(_read_member(tar, m))


def _read_signatures(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, bytes]:
    sigs = {}
    for name, m in members.items():
        if (match := SIGNATURE_RE.fullmatch(name)) and m.isfile():
            if m.size > MAX_SIGNATURE_BYTES:
                raise BundleTooLarge(f"signature {name!r}: {m.size} bytes exceeds the {MAX_SIGNATURE_BYTES}-byte cap")
            sigs[match.group(1)] = _read_member(tar, m)
    if len(sigs) > MAX_SIGNATURES:
        raise BundleTooLarge(f"more than {MAX_SIGNATURES} signatures")
    return sigs


def _check_listed(manifest: Manifest, members: dict[str, tarfile.TarInfo]) -> None:
    files = {ARTIFACTS_PREFIX + a.path for a in manifest.artifacts}
    dirs = _allowed_dirs(manifest)
    for name, m in members.items():
        known = (name in files or name == MANIFEST_NAME or SIGNATURE_RE.fullmatch(name)) if m.isfile() else name in dirs
        if not known:
            raise BundleUnexpectedMember(f"member {name!r} is not listed in the manifest")
    missing = sorted(files - members.keys())
    if missing:
        raise BundleMissingMember(f"listed artifact {missing[0]!r} is missing from the bundle")


def open_bundle(path: Path) -> Bundle:
    """Open and shape-check a bundle; the caller closes it. Raises `Refused` subclasses only."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such bundle file")
    _check_file_size(path)
    try:
        tar = tarfile.open(path, mode="r:")
    except TAR_ERRORS as e:
        raise BundleUnreadable(f"{path.name}: not a readable tar bundle ({e})") from None
    try:
        try:
            members = _read_members(path, tar)
            manifest = _read_manifest(tar, members)
            _check_listed(manifest, members)
            signatures = _read_signatures(tar, members)
        except TAR_ERRORS as e:
            raise BundleUnreadable(f"{path.name}: not a readable tar bundle ({e})") from None
    except BaseException:
        tar.close()
        raise
    return Bundle(path, manifest, signatures, tar, members)
