"""The rules an `image` bundle obeys on top of every bundle's: its artifacts are one container image.

An image bundle passes the same reader, signatures, threshold, expiry, time floor, version and
artifact hashes as every other bundle (`store.importer`). Its artifacts are the files of a
`skopeo copy ... dir:DIR` layout, under their own names and kept in the clear (the image is
public software, like a base model). Then, each rule one small function raising its own
`Refused` subclass, in this order:

On the signed manifest:
1. its `image` record names the OCI manifest and config digests (`sha256:<hex>`), the source
   commit, SOURCE_DATE_EPOCH and the SHA-256 of the base tar and of the lock, each matching
   its pattern in full (JSON Schema's `$` also lets a trailing newline through);
2. the artifacts are a `dir:` layout: `manifest.json`, `version` and blobs, nothing else;
3. each blob's name is the SHA-256 its manifest entry lists, so (the import hashes every
   artifact against its entry) a blob's bytes hash to its name;
4. the SHA-256 of `manifest.json` is the recorded OCI manifest digest.

On the verified bytes (staged by the import, or installed in the store):
5. `version` is the `dir:` transport's version line;
6. `manifest.json` (re-hashed as it is read, parsed by `untrusted_json`) is an image manifest (OCI,
   or Docker schema 2) with only the known keys, spelt exactly: skopeo's Go decoder matches keys
   case-insensitively, so a `"Layers"` beside `"layers"` could be what it loads while this
   verifier reads the other; its config digest is the recorded one;
7. the blobs are exactly the config and the layers it references, each of the size it states
   (an extra blob is refused like an extra file).

The import applies them at its binding step (`store/importer.py`, step 6), once every artifact was
hashed into staging; `verify`, `image use` and `image rollback` apply them again to the stored layout.

Out of scope here: what the image does when it runs (its build's self-test), and the containers
`policy.json` (it cannot express k-of-n; this verifier, with the appliance's pinned keys, is the gate).
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Refused
from ..untrusted_json import JsonRejected, load_untrusted

if TYPE_CHECKING:  # manifest.py is the general parser; these rules only read what it admitted
    from .manifest import Manifest

OCI_MANIFEST = "manifest.json"
VERSION_FILE = "version"
DIR_VERSION = b"Directory Transport Version: 1.1\n"  # what `skopeo copy ... dir:` writes
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
MAX_OCI_MANIFEST_BYTES = 1 << 20
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
BLOB_RE = re.compile(r"[0-9a-f]{64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}(-dirty)?")
MANIFEST_KEYS = frozenset({"schemaVersion", "mediaType", "config", "layers", "annotations"})
DESCRIPTOR_KEYS = frozenset({"mediaType", "digest", "size", "annotations"})  # no `urls`: nothing is fetched


class ImageRecordInvalid(Refused):
    """Rule 1: the manifest's `image` record is missing or a field does not match its pattern."""


class ImageLayoutInvalid(Refused):
    """Rules 2, 5, 6, 7: the artifacts are not a `dir:` layout of one image manifest (a stray file, a wrong size)."""


class ImageBlobMisnamed(Refused):
    """Rule 3: a blob whose name is not the SHA-256 of its bytes."""


class ImageDigestMismatch(Refused):
    """Rules 4 and 6: the OCI manifest or config digest is not the one the signed manifest records."""


class ImageBlobUnreferenced(Refused):
    """Rule 7: a blob the image manifest does not reference (an extra file in the layout)."""


@dataclass(frozen=True)
class ImageRecord:
    """What the signed manifest says about the image it carries."""

    manifest_digest: str  # sha256:<hex> of the OCI manifest: what `podman images --digests` shows
    config_digest: str  # sha256:<hex> of the image config: the image ID
    source_commit: str
    source_date_epoch: int
    base_sha256: str  # of the normalised debootstrap tar the image starts from
    lock_sha256: str  # of image/requirements.lock


def image_record(manifest: "Manifest") -> ImageRecord:
    """Rule 1, from the exact signed bytes (the schema already admitted the record's shape)."""
    doc = json.loads(manifest.raw).get("image")
    if not isinstance(doc, dict):
        raise ImageRecordInvalid(f"{manifest.name} v{manifest.version}: an image manifest must carry an `image` record")
    try:
        record = ImageRecord(**doc)
    except TypeError:
        raise ImageRecordInvalid(f"{manifest.name} v{manifest.version}: the `image` record has other fields") from None
    patterns = {
        "manifest_digest": DIGEST_RE,
        "config_digest": DIGEST_RE,
        "source_commit": COMMIT_RE,
        "base_sha256": SHA256_RE,
        "lock_sha256": SHA256_RE,
    }
    for name, pattern in patterns.items():
        value = getattr(record, name)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ImageRecordInvalid(f"{manifest.name} v{manifest.version}: image.{name} {value!r} does not match its pattern")
    if type(record.source_date_epoch) is not int or record.source_date_epoch < 0:
        raise ImageRecordInvalid(f"{manifest.name} v{manifest.version}: image.source_date_epoch is not a time in seconds")
    return record


def _check_layout_names(manifest: "Manifest") -> None:
    """Rule 2."""
    names = {a.path for a in manifest.artifacts}
    for required in (OCI_MANIFEST, VERSION_FILE):
        if required not in names:
            raise ImageLayoutInvalid(f"{manifest.name} v{manifest.version}: no {required!r}: not a skopeo dir: layout")
    for name in sorted(names - {OCI_MANIFEST, VERSION_FILE}):
        if not BLOB_RE.fullmatch(name):
            raise ImageLayoutInvalid(f"{manifest.name} v{manifest.version}: {name!r} is not a file of a skopeo dir: layout")


def _check_blob_names(manifest: "Manifest") -> None:
    """Rule 3."""
    for a in manifest.artifacts:
        if BLOB_RE.fullmatch(a.path) and a.sha256 != a.path:
            raise ImageBlobMisnamed(f"blob {a.path}: its SHA-256 is {a.sha256}, not its name")


def _check_manifest_digest(manifest: "Manifest", record: ImageRecord) -> None:
    """Rule 4."""
    listed = f"sha256:{manifest.artifact(OCI_MANIFEST).sha256}"
    if listed != record.manifest_digest:
        raise ImageDigestMismatch(f"image manifest digest is {listed}, the signed record says {record.manifest_digest}")


def check_image_manifest(manifest: "Manifest") -> ImageRecord:
    """Rules 1-4: everything the signed manifest alone can say about the layout."""
    record = image_record(manifest)
    _check_layout_names(manifest)
    _check_blob_names(manifest)
    _check_manifest_digest(manifest, record)
    return record


def _check_version_file(layout: Path) -> None:
    """Rule 5 (the import already checked its size and hash; this is what the bytes must say)."""
    if (layout / VERSION_FILE).read_bytes() != DIR_VERSION:
        raise ImageLayoutInvalid(f"{VERSION_FILE}: not the skopeo dir: transport version {DIR_VERSION.decode().strip()!r}")


def _read_image_manifest(manifest: "Manifest", layout: Path) -> dict:
    """Rule 6, first half: the bytes parsed are the bytes hashed, and they are an image manifest."""
    listed = manifest.artifact(OCI_MANIFEST)
    if listed.size > MAX_OCI_MANIFEST_BYTES:
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: {listed.size} bytes exceeds the {MAX_OCI_MANIFEST_BYTES}-byte cap")
    data = (layout / OCI_MANIFEST).read_bytes()
    if hashlib.sha256(data).hexdigest() != listed.sha256:
        raise ImageDigestMismatch(f"{OCI_MANIFEST} changed after it was verified")
    try:
        doc = load_untrusted(data)
    except JsonRejected as e:
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: {e}") from None
    doc = _known_keys(doc, MANIFEST_KEYS, "the document")
    layers = doc.get("layers")
    if type(layers) is not list:
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: not an OCI (or Docker schema 2) image manifest (no list of layers)")
    descriptors = [("config", doc.get("config")), *((f"layers[{n}]", layer) for n, layer in enumerate(layers))]
    refs = [_known_keys(ref, DESCRIPTOR_KEYS, where) for where, ref in descriptors]
    well_formed = (
        type(doc.get("schemaVersion")) is int  # 2.0 equals 2 in Python; JSON's type is the rule
        and doc["schemaVersion"] == 2
        and doc.get("mediaType", MANIFEST_TYPES[0]) in MANIFEST_TYPES
        and all(
            isinstance(r.get("digest"), str) and DIGEST_RE.fullmatch(r["digest"]) and type(r.get("size")) is int for r in refs
        )
    )
    if not well_formed:
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: not an OCI (or Docker schema 2) image manifest")
    return doc


def _known_keys(doc: object, known: frozenset[str], where: str) -> dict:
    """Rule 6's keys: `doc`, an object with only `known` keys; one that differs from a known key only in case is named so."""
    if type(doc) is not dict:
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: {where} is not a JSON object")
    for key in sorted(doc.keys() - known):
        spelt = next((k for k in sorted(known) if k.lower() == key.lower()), None)
        why = f"differs from {spelt!r} only in case" if spelt else "is not a key of an image manifest"
        raise ImageLayoutInvalid(f"{OCI_MANIFEST}: {where} has the key {key!r}, which {why}")
    return doc


def _check_config_digest(doc: dict, record: ImageRecord) -> None:
    """Rule 6, second half."""
    if doc["config"]["digest"] != record.config_digest:
        raise ImageDigestMismatch(
            f"image config digest is {doc['config']['digest']}, the signed record says {record.config_digest}"
        )


def _check_blobs(manifest: "Manifest", doc: dict) -> None:
    """Rule 7."""
    referenced = {r["digest"].removeprefix("sha256:"): r["size"] for r in [doc["config"], *doc["layers"]]}
    blobs = {a.path: a.size for a in manifest.artifacts if BLOB_RE.fullmatch(a.path)}
    for name in sorted(blobs.keys() - referenced.keys()):
        raise ImageBlobUnreferenced(f"blob {name} is not referenced by the image manifest")
    for name, size in sorted(referenced.items()):
        if name not in blobs:
            raise ImageLayoutInvalid(f"blob {name}, referenced by the image manifest, is not in the layout")
        if blobs[name] != size:
            raise ImageLayoutInvalid(f"blob {name} is {blobs[name]} bytes, the image manifest says {size}")


def check_image(manifest: "Manifest", layout: Path) -> ImageRecord:
    """Rules 1-7 for the verified layout in `layout` (a directory of the artifacts, named as listed)."""
    record = check_image_manifest(manifest)
    _check_version_file(layout)
    doc = _read_image_manifest(manifest, layout)
    _check_config_digest(doc, record)
    _check_blobs(manifest, doc)
    return record
