"""The signed manifest of a bundle (`appliance-manifest/1`), parsed from its exact bytes.

A manifest is admitted only if every rule holds; each rule is one small
function raising its own `Refused` subclass that names the fault:

1. it is at most `MAX_MANIFEST_BYTES` long (endless data);
2. it is UTF-8, and JSON nested at most 32 deep, with no duplicate keys and no NaN/Infinity
   (`untrusted_json`);
3. it matches `manifests/appliance-manifest.schema.json`, where an integer is a JSON integer by
   type: `1.0` and `true` are not (JSON Schema's `integer` admits `1.0`, which would install
   "v1.0" and write a float into the store's state);
4. name, hashes and times match their patterns in full (JSON Schema's `$`
   also accepts a trailing newline, so they are re-checked here);
5. `created` and `expires` are real UTC times and `expires` is after `created`;
6. each artifact path is relative, has no `.` or `..` segment, and is listed once;
7. it lists the files its kind needs (`kinds.KINDS`): an overlay `overlay.json` and
   `overlay.safetensors` (the two files of the overlay format), a control vector `control.json`
   and `control.safetensors` (`overlay.control`).

Rule 8, `check_created`, needs the clock and is applied by the import (`store.importer`, step 3):
`created` is at most `CLOCK_TOLERANCE` after now, so a bundle dated in the future cannot move the
time floor past every correctly dated bundle.

The bytes are kept as they came: signatures are checked over `raw`, never over
a re-serialisation.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from io import BytesIO
from typing import Optional, cast

import jsonschema

from ..errors import Refused
from ..untrusted_json import JsonRejected, load_untrusted
from ..utc import CLOCK_TOLERANCE, format_time, parse_time
from .builtin import MANIFESTS_DIR
from .hashing import sha256_stream
from .kinds import KINDS

SCHEMA_PATH = MANIFESTS_DIR / "appliance-manifest.schema.json"
SCHEMA_ID = "appliance-manifest/1"
MAX_MANIFEST_BYTES = 64 * 1024
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
PATH_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


class ManifestTooLarge(Refused):
    pass


class ManifestNotJson(Refused):
    pass


class ManifestSchemaViolation(Refused):
    pass


class ManifestBadTime(Refused):
    pass


class ManifestBadPath(Refused):
    pass


class ManifestOverlayIncomplete(Refused):
    pass


class ManifestFromFuture(Refused):
    """Rule 8: `created` is later than now plus `CLOCK_TOLERANCE` (the bundle's clock, or this one, is wrong)."""


@dataclass(frozen=True)
class Artifact:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    raw: bytes = field(repr=False)  # the exact bytes the signatures cover
    sha256: str  # of `raw`: the content address of this accepted manifest
    kind: str
    name: str
    version: int
    created: datetime
    expires: datetime
    artifacts: tuple[Artifact, ...]
    binds_base_sha256: Optional[str]
    provenance: tuple[tuple[str, str], ...]  # sorted (key, value) pairs, kept hashable

    def artifact(self, path: str) -> Artifact:
        return next(a for a in self.artifacts if a.path == path)


def _is_json_integer(checker, instance: object) -> bool:
    return type(instance) is int  # not bool (a subclass of int), not a float with no fraction


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_json_integer),
)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    return _Validator(json.loads(SCHEMA_PATH.read_text()))


def check_manifest_size(size: int) -> None:
    """Rule 1, also applied by the bundle reader before it reads the member."""
    if size > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"manifest.json: {size} bytes exceeds the {MAX_MANIFEST_BYTES}-byte cap")


def _parse_json(data: bytes) -> object:
    try:
        return load_untrusted(data)
    except JsonRejected as e:
        raise ManifestNotJson(f"manifest.json: {e}") from None


def _check_schema(doc: object) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ManifestSchemaViolation(f"manifest.json does not match {SCHEMA_ID}: at {where}: {error.message[:200]}")


def _check_patterns(doc: dict) -> None:
    hashes = [a["sha256"] for a in doc["artifacts"]] + [
        v for k, v in (doc.get("binds", {}) | doc.get("provenance", {})).items() if k.endswith("sha256")
    ]
    if not NAME_RE.fullmatch(doc["name"]):
        raise ManifestSchemaViolation(f"manifest.json: name {doc['name']!r} is not a valid item name")
    if not all(SHA256_RE.fullmatch(h) for h in hashes):
        raise ManifestSchemaViolation("manifest.json: every SHA-256 must be exactly 64 lowercase hex digits")


def _check_times(doc: dict) -> tuple[datetime, datetime]:
    try:
        created, expires = parse_time(doc["created"]), parse_time(doc["expires"])
    except ValueError as e:
        raise ManifestBadTime(f"manifest.json: bad time: {e}") from None
    if expires <= created:
        raise ManifestBadTime(f"manifest.json: expires {doc['expires']} is not after created {doc['created']}")
    return created, expires


def _check_paths(doc: dict) -> None:
    seen: set[str] = set()
    for path in (a["path"] for a in doc["artifacts"]):
        if not PATH_RE.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")):
            raise ManifestBadPath(f"manifest.json: artifact path {path!r} is not a plain relative path")
        if path in seen:
            raise ManifestBadPath(f"manifest.json: artifact {path!r} is listed twice")
        seen.add(path)


def _check_overlay_files(doc: dict) -> None:
    needed = set(KINDS[doc["kind"]].files)  # the schema admits only the kinds of the table
    if not needed <= {a["path"] for a in doc["artifacts"]}:
        raise ManifestOverlayIncomplete(
            f"manifest.json: a{'n' if doc['kind'] == 'overlay' else ''} {doc['kind']} must list {sorted(needed)}"
        )


def check_created(manifest: Manifest, now: datetime) -> None:
    """Rule 8: refused if `created` is more than `CLOCK_TOLERANCE` after `now`."""
    if manifest.created > now + CLOCK_TOLERANCE:
        raise ManifestFromFuture(
            f"{manifest.name} v{manifest.version}: created {format_time(manifest.created)}, later than now "
            f"({format_time(now)}) plus the tolerance of {CLOCK_TOLERANCE}: is its clock, or this appliance's, wrong?"
        )


def parse_manifest(data: bytes) -> Manifest:
    """Admit a manifest from its exact bytes, or raise a `Refused` subclass naming the fault."""
    check_manifest_size(len(data))
    doc = _parse_json(data)
    _check_schema(doc)
    doc = cast(dict, doc)  # the schema admits only an object
    _check_patterns(doc)
    created, expires = _check_times(doc)
    _check_paths(doc)
    _check_overlay_files(doc)
    return Manifest(
        raw=bytes(data),
        sha256=sha256_stream(BytesIO(data))[0],
        kind=doc["kind"],
        name=doc["name"],
        version=doc["version"],
        created=created,
        expires=expires,
        artifacts=tuple(Artifact(a["path"], a["sha256"], a["size"]) for a in doc["artifacts"]),
        binds_base_sha256=doc.get("binds", {}).get("base_model_sha256"),
        provenance=tuple(sorted(doc.get("provenance", {}).items())),
    )
