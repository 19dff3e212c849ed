"""What the image tests build with: small synthetic `skopeo copy dir:` layouts of a real (tiny) image.

A plain module (not conftest.py), so test files import it by a name no other test directory uses.
The layer is a gzipped tar of one file and the config a minimal OCI config, so skopeo can load the
layout into container storage like a real one; only the size differs.
"""

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from bundles import Keys

from appliance.image.pack import pack_image
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.trust.image_rules import DIR_VERSION

OCI = "application/vnd.oci.image"
BUILD_INFO = {"source_commit": "0123456789abcdef0123456789abcdef01234567", "source_date_epoch": 1764547200,
              "base_sha256": "b" * 64, "lock_sha256": "c" * 64}  # fmt: skip


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _layer(text: str) -> tuple[bytes, bytes]:
    """(gzipped tar, the tar): one file, fixed times, so the same text gives the same blob."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def synthetic_layout(directory: Path, text: str = "version 1") -> Path:
    """A `dir:` layout as skopeo writes it: manifest.json, version, blobs named by their SHA-256."""
    directory.mkdir(parents=True)
    layer, tar = _layer(text)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(tar)}"]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": f"{OCI}.manifest.v1+json",
        "config": {"mediaType": f"{OCI}.config.v1+json", "digest": f"sha256:{_sha(config)}", "size": len(config)},
        "layers": [{"mediaType": f"{OCI}.layer.v1.tar+gzip", "digest": f"sha256:{_sha(layer)}", "size": len(layer)}],
    }).encode()  # fmt: skip
    for name, data in ((_sha(layer), layer), (_sha(config), config), ("manifest.json", manifest), ("version", DIR_VERSION)):
        (directory / name).write_bytes(data)
    return directory


def config_digest(layout: Path) -> str:
    return json.loads((layout / "manifest.json").read_bytes())["config"]["digest"]


def sign(keys: Keys, bundle: Path, signers=("alice", "bob")) -> Path:
    for s in signers:
        sign_bundle(bundle, keys.fpr[s], keys.home)
    return bundle


def image_bundle(keys: Keys, out: Path, layout: Path, *, version=1, signers=("alice", "bob"), **kw) -> Path:
    """Packed as the build station packs it (`appliance image pack`), then signed."""
    pack_image(layout, out, name="appliance", version=version, build_info=BUILD_INFO, **kw)
    return sign(keys, out, signers)


def forged_image_bundle(keys: Keys, out: Path, layout: Path, *, version=1, **record) -> Path:
    """Packed without the build station's own check, with `record` overriding the image record: what a
    careless or hostile build station could sign."""
    manifest = json.loads((layout / "manifest.json").read_bytes())
    image = {"manifest_digest": f"sha256:{_sha((layout / 'manifest.json').read_bytes())}",
             "config_digest": manifest["config"]["digest"], **BUILD_INFO, **record}  # fmt: skip
    create_bundle(out, kind="image", name="appliance", version=version, artifacts=sorted(layout.iterdir()), image=image)
    return sign(keys, out)
