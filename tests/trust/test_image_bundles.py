"""The `image` bundle kind: the same verifier and rules as every bundle, plus the image's own
(trust/image_rules.py), on small synthetic `skopeo copy dir:` layouts; then which version runs.

Every refusal is exit 3 with the rule's reason code and the state dir byte-identical
(`assert_refused`). Container storage, where skopeo is installed, is a fresh vfs one per test.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from bundles import file_member, iso, members, raw_signature, utc, write_tar
from helpers import PASSPHRASE, appliance, assert_refused, error_line, ok, tree_digest
from images import config_digest, forged_image_bundle, image_bundle, synthetic_layout
from test_refusals import replace_member, signatures_of, with_signatures

from appliance.image import storage, versions
from appliance.trust.bundle import create_bundle
from appliance.trust.image_rules import ImageBlobUnreferenced
from appliance.trust.manifest import ManifestSchemaViolation
from appliance.vault import Vault

SKOPEO = shutil.which("skopeo") is not None
# What choosing another image version may rewrite: the store's commit point and the vault's seal of it.
SWITCH_WRITES = {"store/state.json", "vault/vault.json"}


@pytest.fixture(autouse=True)
def container_storage(tmp_path, monkeypatch):
    """A fresh container storage for this test: the machine's own is never touched."""
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path}/graph"\nrunroot = "{tmp_path}/run"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    return conf


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    return synthetic_layout(tmp / "v1", "version 1"), synthetic_layout(tmp / "v2", "version 2")


@pytest.fixture(scope="module")
def v1(keys, layouts, tmp_path_factory):
    return image_bundle(keys, tmp_path_factory.mktemp("v1") / "appliance-v1.bundle", layouts[0])


@pytest.fixture(scope="module")
def v2(keys, layouts, tmp_path_factory):
    return image_bundle(keys, tmp_path_factory.mktemp("v2") / "appliance-v2.bundle", layouts[1], version=2)


def copy_layout(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def layer_name(layout: Path) -> str:
    return json.loads((layout / "manifest.json").read_bytes())["layers"][0]["digest"].removeprefix("sha256:")


def active_config(tag: str = "active") -> str:
    """The image ID (config digest) that container storage holds under localhost/appliance:TAG."""
    out = subprocess.run(["skopeo", "inspect", "--raw", f"containers-storage:localhost/appliance:{tag}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)["config"]["digest"]


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


# -- accepted ---------------------------------------------------------------------------


def test_a_signed_image_imports_and_is_listed(home, v1, layouts):
    out = ok("update", "import", str(v1))
    assert "installed image appliance v1" in out
    listed = ok("image", "list")
    assert listed.startswith("* appliance v1  sha256:") and "source 0123456789abcdef" in listed
    if SKOPEO:
        assert "loaded as localhost/appliance:1 and localhost/appliance:active" in out
        assert active_config() == active_config("1") == config_digest(layouts[0])


def test_the_build_station_refuses_to_pack_a_layout_the_appliance_would_refuse(layouts, tmp_path):
    layout = copy_layout(layouts[0], tmp_path / "layout")
    (layout / hashlib.sha256(b"stray").hexdigest()).write_bytes(b"stray")
    with pytest.raises(ImageBlobUnreferenced):
        image_bundle(None, tmp_path / "b.bundle", layout, signers=())
    assert not (tmp_path / "b.bundle").exists()


# -- refused: every bundle's rules --------------------------------------------------------


def test_tampered_blob(home, v1, layouts, tmp_path):
    name = f"artifacts/{layer_name(layouts[0])}"
    data = {m.name: d for m, d in members(v1)}[name]
    bad = replace_member(v1, tmp_path / "b.bundle", name, data[:-1] + bytes([data[-1] ^ 1]))
    assert_refused(home, bad, "hash-mismatch", layer_name(layouts[0]))


def test_one_signature_of_two(home, keys, layouts, tmp_path):
    bad = image_bundle(keys, tmp_path / "b.bundle", layouts[0], signers=("alice",))
    assert_refused(home, bad, "threshold-not-met", "1 of 2 required signatures")


def test_signature_by_an_unpinned_key(home, keys, layouts, tmp_path):
    bad = image_bundle(keys, tmp_path / "b.bundle", layouts[0], signers=("alice", "carol"))
    assert_refused(home, bad, "threshold-not-met", keys.fpr["carol"], "not pinned")


def test_signature_by_an_expired_key(home, keys, v1, tmp_path):
    sigs, raw = signatures_of(v1)
    old = raw_signature(keys, "old", raw, "--faked-system-time", "20200101T120000")
    bad = with_signatures(v1, tmp_path / "b.bundle", {keys.fpr["alice"]: sigs[keys.fpr["alice"]], keys.fpr["old"]: old})
    assert_refused(home, bad, "threshold-not-met", keys.fpr["old"], "expired")


def test_expired_manifest(home, keys, layouts, tmp_path):
    bad = image_bundle(keys, tmp_path / "b.bundle", layouts[0], created=utc(-10), expires=iso(-1))
    assert_refused(home, bad, "manifest-expired", "appliance v1")


def test_extra_file_in_the_bundle(home, v1, tmp_path):
    bad = write_tar(tmp_path / "b.bundle", members(v1) + [file_member("artifacts/extra", b"x")])
    assert_refused(home, bad, "bundle-unexpected-member", "artifacts/extra")


def test_older_version(home, v1, v2):
    ok("update", "import", str(v2))
    assert_refused(home, v1, "version-not-newer", "older version (rollback)")


def test_an_image_manifest_needs_its_record(layouts, tmp_path):
    """The manifest parser (the import's, here the build station's) refuses an image without its record."""
    with pytest.raises(ManifestSchemaViolation, match="'image' is a required property"):
        create_bundle(tmp_path / "b.bundle", kind="image", name="appliance", version=1, artifacts=sorted(layouts[0].iterdir()))


# -- refused: the image's own rules -------------------------------------------------------


def test_blob_name_not_its_hash(home, keys, layouts, tmp_path):
    layout = copy_layout(layouts[0], tmp_path / "layout")
    old, new = layer_name(layout), "f" * 64
    (layout / old).rename(layout / new)  # the OCI manifest follows, so only the naming rule is broken
    (layout / "manifest.json").write_bytes((layout / "manifest.json").read_bytes().replace(old.encode(), new.encode()))
    bad = forged_image_bundle(keys, tmp_path / "b.bundle", layout)
    assert_refused(home, bad, "image-blob-misnamed", new)


def test_manifest_digest_mismatch(home, keys, layouts, tmp_path):
    bad = forged_image_bundle(keys, tmp_path / "b.bundle", layouts[0], manifest_digest="sha256:" + "d" * 64)
    assert_refused(home, bad, "image-digest-mismatch", "manifest digest", "d" * 64)


def test_config_digest_mismatch(home, keys, layouts, tmp_path):
    bad = forged_image_bundle(keys, tmp_path / "b.bundle", layouts[0], config_digest="sha256:" + "d" * 64)
    assert_refused(home, bad, "image-digest-mismatch", "config digest", "d" * 64)


def test_extra_blob_in_the_layout(home, keys, layouts, tmp_path):
    layout = copy_layout(layouts[0], tmp_path / "layout")
    extra = b"not part of the image"
    name = hashlib.sha256(extra).hexdigest()
    (layout / name).write_bytes(extra)
    assert_refused(home, forged_image_bundle(keys, tmp_path / "b.bundle", layout), "image-blob-unreferenced", name)


def test_a_file_that_is_not_part_of_a_dir_layout(home, keys, layouts, tmp_path):
    layout = copy_layout(layouts[0], tmp_path / "layout")
    (layout / "notes.txt").write_text("hello")
    assert_refused(home, forged_image_bundle(keys, tmp_path / "b.bundle", layout), "image-layout-invalid", "notes.txt")


def test_a_wrong_dir_transport_version(home, keys, layouts, tmp_path):
    layout = copy_layout(layouts[0], tmp_path / "layout")
    (layout / "version").write_bytes(b"Directory Transport Version: 9.9\n")
    assert_refused(home, forged_image_bundle(keys, tmp_path / "b.bundle", layout), "image-layout-invalid", "version")


def test_a_record_field_with_a_trailing_newline(home, keys, layouts, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567\n"  # JSON Schema's `$` lets it through
    bad = forged_image_bundle(keys, tmp_path / "b.bundle", layouts[0], source_commit=commit)
    assert_refused(home, bad, "image-record-invalid", "source_commit")


# -- which version runs -------------------------------------------------------------------


def test_use_and_rollback_switch_the_active_version_and_nothing_else(home, v1, v2, layouts):
    ok("update", "import", str(v1))
    ok("update", "import", str(v2))
    assert ok("image", "list").splitlines()[1].startswith("* appliance v2")
    before = tree_digest(home)
    assert "image appliance: v2 -> v1" in ok("image", "rollback")
    assert ok("image", "list").splitlines()[0].startswith("* appliance v1")
    assert changed(before, tree_digest(home)) <= SWITCH_WRITES
    if SKOPEO:
        assert active_config() == config_digest(layouts[0])
    assert "image appliance: v1 -> v2" in ok("image", "use", "2")
    assert changed(before, tree_digest(home)) <= SWITCH_WRITES
    if SKOPEO:
        assert active_config() == config_digest(layouts[1])


def test_use_re_verifies_the_layout_in_the_store(home, v1, v2, layouts):
    ok("update", "import", str(v1))
    ok("update", "import", str(v2))
    (blob,) = (home / "store" / "objects").glob(f"*/artifacts/{layer_name(layouts[0])}")
    blob.write_bytes(blob.read_bytes() + b"x")
    before = tree_digest(home)
    assert layer_name(layouts[0]) in error_line(appliance("image", "use", "1"), 3, "size-mismatch")
    assert tree_digest(home) == before


def test_use_a_version_that_is_not_installed(home, v1):
    ok("update", "import", str(v1))
    before = tree_digest(home)
    assert "appliance v7 is not installed" in error_line(appliance("image", "use", "7"), 5, "not-found")
    assert tree_digest(home) == before


def test_without_skopeo_the_layout_is_kept_and_the_way_to_load_it_is_said(home, v1, tmp_path):
    bin_dir = tmp_path / "bin"  # this PATH with every program but skopeo
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for exe in Path(d).glob("*") if Path(d).is_dir() else ():
            if exe.name != "skopeo" and not (bin_dir / exe.name).exists():
                (bin_dir / exe.name).symlink_to(exe)
    r = appliance("update", "import", str(v1), env={"PATH": str(bin_dir)})
    assert r.returncode == 0, r.stderr
    (sha,) = [p.name for p in (home / "store" / "objects").iterdir()]
    layout = home / "store" / "objects" / sha / "artifacts"
    assert f"skopeo copy --quiet dir:{layout} containers-storage:localhost/appliance:1" in r.stderr
    assert "containers-storage:localhost/appliance:active" in r.stderr


def test_the_switch_loads_before_it_commits(home, v1, v2, monkeypatch):
    """A load that fails leaves the active version as it was."""
    ok("update", "import", str(v1))
    ok("update", "import", str(v2))

    def failing(layout, name, version):
        raise storage.ImageLoadFailed("no storage")

    monkeypatch.setattr(storage, "load", failing)
    before = tree_digest(home)
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        with pytest.raises(storage.ImageLoadFailed):
            versions.use_image(vault, 1)
    finally:
        vault.zeroize()
    assert tree_digest(home) == before
