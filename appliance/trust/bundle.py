"""The build station's side of a bundle: create it, add signatures one signer at a time.

A bundle is written deterministically (fixed member order, times, owners and
modes), so the same inputs give the same bytes, and always through a temp file
and a rename, so a half-written bundle never carries the final name.
"""

import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Optional

from ..errors import Refused, UsageError
from ..fsutil import atomic_file
from ..progress import SILENT, Advance, Steps
from ..utc import format_time, now, parse_time
from .bundle_reader import ARTIFACTS_PREFIX, MANIFEST_NAME, open_bundle
from .hashing import sha256_file
from .manifest import SCHEMA_ID, Manifest, parse_manifest
from .signatures import sign_detached

DEFAULT_LIFETIME = timedelta(days=180)
_RELATIVE_EXPIRY = re.compile(r"\+([0-9]{1,5})d")


class AlreadySigned(Refused):
    pass


@dataclass(frozen=True)
class Source:
    """One artifact to pack: its size and how to open its bytes."""

    size: int
    open: Callable[[], BinaryIO]


def _file_source(size: int, path: Path) -> Source:
    return Source(size, lambda: open(path, "rb"))


def parse_expiry(text: Optional[str], created: datetime) -> datetime:
    """`+Nd` (days after `created`), a `YYYY-MM-DDTHH:MM:SSZ` time, or the default lifetime."""
    if text is None:
        return created + DEFAULT_LIFETIME
    if m := _RELATIVE_EXPIRY.fullmatch(text):
        return created + timedelta(days=int(m.group(1)))
    try:
        return parse_time(text)
    except ValueError as e:
        raise UsageError(f"--expires: {e} (or +Nd)") from None


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_bundle(
    out: Path, manifest: Manifest, signatures: dict[str, bytes], sources: dict[str, Source], steps: Steps = SILENT
) -> None:
    """manifest.json, then signatures in fingerprint order, then artifacts in manifest order; atomically."""
    total = sum(source.size for source in sources.values())
    with atomic_file(Path(out).resolve(), mode=0o644) as f, steps.step(f"write {Path(out).name}", total) as advance:
        with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_member(MANIFEST_NAME, len(manifest.raw)), BytesIO(manifest.raw))
            for fpr, sig in sorted(signatures.items()):
                tar.addfile(_member(f"signatures/{fpr}.asc", len(sig)), BytesIO(sig))
            for a in manifest.artifacts:
                with sources[a.path].open() as src:
                    tar.addfile(_member(ARTIFACTS_PREFIX + a.path, sources[a.path].size), _Counted(src, advance))


class _Counted:
    """A source file whose reads are reported (tarfile copies a member by `read`)."""

    def __init__(self, src: BinaryIO, advance: Advance):
        self.src, self.advance = src, advance

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.advance(len(data))
        return data


def create_bundle(
    out: Path,
    *,
    kind: str,
    name: str,
    version: int,
    artifacts: list[Path],
    binds_base: Optional[str] = None,
    created: Optional[datetime] = None,
    expires: Optional[str] = None,
    provenance: Optional[dict] = None,
    image: Optional[dict] = None,
    steps: Steps = SILENT,
) -> Manifest:
    """Hash each artifact file, write the manifest that names them all, pack the unsigned bundle."""
    paths = {Path(p).name: Path(p) for p in artifacts}
    if len(paths) != len(artifacts):
        raise UsageError("two --artifact files share a file name; each is stored under its name")
    created = (created or now()).replace(microsecond=0)
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "kind": kind,
        "name": name,
        "version": version,
        "created": format_time(created),
        "expires": format_time(parse_expiry(expires, created)),
        "artifacts": [],
    }
    for path_name, path in paths.items():
        with steps.step(f"hash {path_name}", path.stat().st_size) as advance:
            digest, size = sha256_file(path, advance)
        doc["artifacts"].append({"path": path_name, "sha256": digest, "size": size})
    if binds_base:
        doc["binds"] = {"base_model_sha256": binds_base}
    if image:
        doc["image"] = image  # kind image: what its dir: layout holds (trust/image_rules.py)
    if provenance:
        doc["provenance"] = provenance
    manifest = parse_manifest((json.dumps(doc, indent=2) + "\n").encode())
    sources = {a.path: _file_source(a.size, paths[a.path]) for a in manifest.artifacts}
    write_bundle(out, manifest, {}, sources, steps)
    return manifest


def sign_bundle(path: Path, key: str, gnupghome: Optional[Path] = None, steps: Steps = SILENT) -> str:
    """Add `signatures/<FPR>.asc` by `key` over the exact manifest bytes; returns the signer's fingerprint."""
    with open_bundle(path) as bundle:
        fpr, sig = sign_detached(gnupghome, key, bundle.manifest.raw)
        if fpr in bundle.signatures:
            raise AlreadySigned(f"{Path(path).name} already carries a signature by {fpr}")
        sources = {
            a.path: Source(bundle.artifact_size(a.path), partial(bundle.open_artifact, a.path)) for a in bundle.manifest.artifacts
        }
        write_bundle(path, bundle.manifest, {**bundle.signatures, fpr: sig}, sources, steps)
    return fpr
