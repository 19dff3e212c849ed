"""Every way an import must be refused: exit 3, one `error:` line naming the fault and ending with the
reason code of the rule that refused (`[hash-mismatch]`), the state dir untouched."""

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from bundles import (
    BASE_SHA,
    file_member,
    iso,
    make_bundle,
    make_not_a_model_bundle,
    members,
    raw_signature,
    set_floor,
    utc,
    write_tar,
)
from helpers import appliance, assert_refused, error_line, tree_digest

from appliance.store import ActiveBase
from appliance.store.importer import import_bundle
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.trust.bundle import Source, write_bundle
from appliance.trust.bundle_reader import open_bundle
from appliance.trust.manifest import (
    ManifestBadPath,
    ManifestBadTime,
    ManifestNotJson,
    ManifestOverlayIncomplete,
    ManifestSchemaViolation,
    ManifestTooLarge,
    parse_manifest,
)


@pytest.fixture(scope="module")
def base():
    return ActiveBase(verify_pinned(embedded_pin()), hidden_size=576)


@pytest.fixture(scope="module")
def good(keys, tmp_path_factory):
    return make_bundle(keys, tmp_path_factory.mktemp("good") / "care-v1.bundle")


def with_signatures(src, out, signatures):
    """The same manifest and artifacts, carrying exactly `signatures` (fingerprint -> armoured bytes)."""
    with open_bundle(src) as b:
        sources = {a.path: Source(b.artifact_size(a.path), lambda p=a.path: b.open_artifact(p)) for a in b.manifest.artifacts}
        write_bundle(out, b.manifest, signatures, sources)
    return out


def signatures_of(bundle):
    with open_bundle(bundle) as b:
        return dict(b.signatures), b.manifest.raw


def replace_member(src, out, name, data):
    return write_tar(out, [(m, data if m.name == name else d) for m, d in members(src)])


# -- artifacts -----------------------------------------------------------------


def test_flipped_byte_in_artifact(home, good, tmp_path):
    data = {m.name: d for m, d in members(good)}["artifacts/overlay.safetensors"]
    flipped = data[:-7] + bytes([data[-7] ^ 1]) + data[-6:]
    assert_refused(
        home,
        replace_member(good, tmp_path / "b.bundle", "artifacts/overlay.safetensors", flipped),
        "hash-mismatch",
        "overlay.safetensors",
    )


def test_artifact_swapped_from_another_signed_bundle(home, keys, good, tmp_path):
    other = make_bundle(keys, tmp_path / "other.bundle", seed=7)
    theirs = {m.name: d for m, d in members(other)}["artifacts/overlay.safetensors"]
    assert_refused(
        home,
        replace_member(good, tmp_path / "b.bundle", "artifacts/overlay.safetensors", theirs),
        "hash-mismatch",
        "overlay.safetensors",
    )


def test_extra_member(home, good, tmp_path):
    bad = write_tar(tmp_path / "b.bundle", members(good) + [file_member("artifacts/extra.bin", b"x")])
    assert_refused(home, bad, "bundle-unexpected-member", "artifacts/extra.bin")


def test_missing_member(home, good, tmp_path):
    bad = write_tar(tmp_path / "b.bundle", [(m, d) for m, d in members(good) if m.name != "artifacts/overlay.json"])
    assert_refused(home, bad, "bundle-missing-member", "overlay.json")


# -- manifest and signatures -----------------------------------------------------


def test_manifest_edited_after_signing(home, good, tmp_path):
    manifest = {m.name: d for m, d in members(good)}["manifest.json"]
    edited = manifest.replace(b'"version": 1', b'"version": 9')
    assert edited != manifest
    assert_refused(
        home, replace_member(good, tmp_path / "b.bundle", "manifest.json", edited), "threshold-not-met", "0 of 2", "bad signature"
    )


def _alice_and(keys, good, out, signer, *gpg_args):
    """The good bundle, signed by pinned alice and by `signer` (instead of bob)."""
    sigs, raw = signatures_of(good)
    return with_signatures(good, out, {keys.fpr["alice"]: sigs[keys.fpr["alice"]],
                                       keys.fpr[signer]: raw_signature(keys, signer, raw, *gpg_args)})  # fmt: skip


def test_signature_by_unpinned_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "carol")
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["carol"], "not pinned")


def test_signature_by_expired_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "old", "--faked-system-time", "20200101T120000")
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["old"], "expired")


def test_signature_by_revoked_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "rev")
    assert_refused(home, bad, "threshold-not-met", "1 of 2", keys.fpr["rev"], "revoked")


def test_one_of_two_required_signatures(home, keys, good, tmp_path):
    sigs, _ = signatures_of(good)
    bad = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: sigs[keys.fpr["alice"]]})
    assert_refused(
        home, bad, "threshold-not-met", "1 of 2 required signatures", f"counted: {keys.fpr['alice']}; did not count: none"
    )


def test_same_signer_twice(home, keys, good, tmp_path):
    sigs, _ = signatures_of(good)
    alice = sigs[keys.fpr["alice"]]
    bad = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: alice, keys.fpr["bob"]: alice})
    assert_refused(home, bad, "threshold-not-met", "1 of 2", f"made by {keys.fpr['alice']}")


# -- versions and time: the wiring (each rule's cases: tests/store/test_decision.py) ------


def test_same_version_again_is_a_replay(home, good, base, vault):
    import_bundle(good, base, vault)
    assert_refused(home, good, "version-not-newer", "same version again (replay)")


def test_expiry_before_time_floor_when_clock_set_back(home, keys, tmp_path):
    # The floor 30 minutes ahead (a bundle created then was accepted): the clock now reads as set back
    # (within the tolerance: further behind, nothing is imported at all, test_signature_rules.py).
    set_floor(home, utc(30 / 1440))
    bad = make_bundle(keys, tmp_path / "b.bundle", created=utc(-1), expires=iso(20 / 1440))
    assert_refused(home, bad, "manifest-expired", "before the time floor", "set back")


def test_overlay_bound_to_another_base(home, keys, tmp_path):
    other = "0" * 64
    bad = make_bundle(keys, tmp_path / "b.bundle", base=other, binds=other)
    assert_refused(home, bad, "binding-mismatch", BASE_SHA)


# -- tar shape -------------------------------------------------------------------


def special(name, type_, **attrs):
    info = tarfile.TarInfo(name)
    info.type = type_
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, b""


@pytest.mark.parametrize(
    "entry, words",
    [
        (file_member("../evil", b"x"), ("'../evil'", "'..'")),
        (file_member("/etc/evil", b"x"), ("'/etc/evil'", "absolute")),
        (special("artifacts/link", tarfile.SYMTYPE, linkname="/etc/passwd"), ("'artifacts/link'", "symbolic link")),
        (special("artifacts/hard", tarfile.LNKTYPE, linkname="manifest.json"), ("'artifacts/hard'", "hard link")),
        (special("artifacts/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), ("'artifacts/dev'", "device")),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_tar_member(home, good, tmp_path, entry, words):
    assert_refused(home, write_tar(tmp_path / "b.bundle", members(good) + [entry]), "bundle-unsafe-member", *words)


def test_too_many_members(home, good, tmp_path):
    many = [file_member(f"artifacts/f{i}", b"") for i in range(300)]
    assert_refused(home, write_tar(tmp_path / "b.bundle", members(good) + many), "bundle-too-large", "more than 256 members")


def test_oversized_manifest(home, good, tmp_path):
    manifest = {m.name: d for m, d in members(good)}["manifest.json"]
    big = manifest[:-2] + b" " * 70_000 + manifest[-2:]
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "manifest.json", big), "manifest-too-large", "manifest.json")


@pytest.mark.parametrize("cut", [0.0005, 0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated_bundle(home, good, tmp_path, cut):
    data = good.read_bytes()
    (tmp_path / "b.bundle").write_bytes(data[: int(len(data) * cut)])
    assert_refused(home, tmp_path / "b.bundle", "bundle-unreadable", "b.bundle")


def test_random_bytes(home, tmp_path):
    (tmp_path / "b.bundle").write_bytes(os.urandom(20_000))
    assert_refused(home, tmp_path / "b.bundle", "bundle-unreadable", "b.bundle")


@pytest.mark.parametrize(
    "manifest, words",
    [
        (b'{"schema": "appliance-manifest/1", "kind": ', ("line 1 column",)),
        (b'{"schema": "appliance-manifest/1", "name": "\xff\xfe"}', ("UTF-8", "byte 44")),
    ],
    ids=["invalid-json", "invalid-utf8"],
)
def test_bad_manifest_encoding(home, good, tmp_path, manifest, words):
    bad = replace_member(good, tmp_path / "b.bundle", "manifest.json", manifest)
    assert_refused(home, bad, "manifest-not-json", "manifest.json", *words)


# -- the manifest's rules, one type each (trust/manifest.py), in process -----------------


def manifest_bytes(**change) -> bytes:
    artifacts = [{"path": p, "sha256": "a" * 64, "size": 1} for p in ("overlay.json", "overlay.safetensors")]
    doc = {"schema": "appliance-manifest/1", "kind": "overlay", "name": "care", "version": 1,
           "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z",
           "artifacts": artifacts, "binds": {"base_model_sha256": BASE_SHA}}  # fmt: skip
    return json.dumps({**doc, **change}).encode()


def artifact(path: str) -> dict:
    return {"path": path, "sha256": "a" * 64, "size": 1}


@pytest.mark.parametrize("data, error", [
    (b" " * 65_537, ManifestTooLarge),
    (b'{"name": "\xff"}', ManifestNotJson),
    (b'{"name": "a", "name": "b"}', ManifestNotJson),
    (b'{"version": NaN}', ManifestNotJson),
    (manifest_bytes(kind="image"), ManifestSchemaViolation),
    (manifest_bytes(name="care\n"), ManifestSchemaViolation),  # JSON Schema's `$` lets a trailing newline through
    (manifest_bytes(created="2026-02-30T00:00:00Z"), ManifestBadTime),
    (manifest_bytes(expires="2026-01-01T00:00:00Z"), ManifestBadTime),
    (manifest_bytes(artifacts=[artifact("overlay.json"), artifact("overlay.safetensors\n")]), ManifestBadPath),
    (manifest_bytes(artifacts=[artifact("overlay.json"), artifact("overlay.safetensors"), artifact("overlay.json")]), ManifestBadPath),
    (manifest_bytes(artifacts=[artifact("overlay.json")]), ManifestOverlayIncomplete),
], ids=["too-large", "not-utf8", "duplicate-key", "nan", "schema", "name-newline", "no-such-day",
        "expires-not-after-created", "path-newline", "path-twice", "overlay-incomplete"])  # fmt: skip
def test_each_manifest_rule_refuses_with_its_own_type(data, error):
    assert parse_manifest(manifest_bytes()).name == "care"  # the unchanged manifest passes
    with pytest.raises(error):
        parse_manifest(data)


# -- the other trust commands' rules, through the CLI ------------------------------------


def test_trust_add_refuses_a_key_file_that_is_not_the_typed_key(home, keys, tmp_path):
    before = tree_digest(home)
    carol = keys.public("carol", tmp_path)
    line = error_line(appliance("trust", "add", str(carol), "--fingerprint", keys.fpr["bob"]), 3, "key-file-refused")
    assert keys.fpr["carol"] in line and keys.fpr["bob"] in line
    assert tree_digest(home) == before


def test_bundle_sign_refuses_a_second_signature_by_one_key(keys, good, tmp_path):
    bundle = tmp_path / "c.bundle"
    bundle.write_bytes(good.read_bytes())
    r = appliance("bundle", "sign", str(bundle), "--key", keys.fpr["alice"], "--gnupghome", str(keys.home))
    assert keys.fpr["alice"] in error_line(r, 3, "already-signed")
    assert bundle.read_bytes() == good.read_bytes()


def test_bundle_sign_without_the_secret_key_fails(keys, good, tmp_path):
    bundle = tmp_path / "c.bundle"
    bundle.write_bytes(good.read_bytes())
    empty = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))  # a GnuPG home with no keys (short: agent socket)
    try:
        r = appliance("bundle", "sign", str(bundle), "--key", keys.fpr["carol"], "--gnupghome", str(empty))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(empty), "--kill", "all"], capture_output=True)
        shutil.rmtree(empty, ignore_errors=True)
    assert keys.fpr["carol"] in error_line(r, 3, "signing-failed")
    assert bundle.read_bytes() == good.read_bytes()


def test_bundle_sign_with_a_key_not_in_the_home_signs_nothing(keys, good, tmp_path):
    """gpg falls back to the home's default secret key when the one asked for is missing: refused."""
    bundle = tmp_path / "d.bundle"
    bundle.write_bytes(good.read_bytes())
    r = appliance("bundle", "sign", str(bundle), "--key", "0" * 40, "--gnupghome", str(keys.home))
    assert "0" * 40 in error_line(r, 3, "signing-failed")
    assert bundle.read_bytes() == good.read_bytes()


def test_a_name_keeps_its_kind(home, keys, good, base, vault, tmp_path):
    import_bundle(good, base, vault)
    other = make_not_a_model_bundle(keys, tmp_path / "care-base.bundle", name="care", version=2)
    assert_refused(home, other, "kind-changed", "installed as a overlay", "this bundle is a base-model")


def test_an_installed_manifest_edited_in_the_store_is_refused(home, good, base, vault):
    import_bundle(good, base, vault)
    (manifest,) = (home / "store" / "objects").glob("*/manifest.json")
    manifest.write_bytes(manifest.read_bytes() + b" ")
    before = tree_digest(home)
    assert "was modified" in error_line(appliance("status"), 3, "store-damaged")
    assert tree_digest(home) == before
