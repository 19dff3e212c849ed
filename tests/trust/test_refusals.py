"""Every way an import must be refused: exit 3, one `error:` line naming the fault, the state dir untouched."""

import os
import tarfile

import pytest
from bundles import (
    BASE_SHA,
    file_member,
    iso,
    make_bundle,
    members,
    raw_signature,
    utc,
    write_tar,
)
from helpers import appliance, tree_digest

from appliance.store import Base
from appliance.store.importer import import_bundle
from appliance.trust.builtin import embedded_pin, verify_pinned
from appliance.trust.bundle import Source, write_bundle
from appliance.trust.bundle_reader import open_bundle


def assert_refused(home, bundle, *words):
    before = tree_digest(home)
    r = appliance("update", "import", str(bundle))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    assert tree_digest(home) == before


@pytest.fixture(scope="module")
def base():
    return Base(verify_pinned(embedded_pin()), hidden_size=576)


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
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "artifacts/overlay.safetensors", flipped),
                   "overlay.safetensors", "SHA-256 mismatch")


def test_artifact_swapped_from_another_signed_bundle(home, keys, good, tmp_path):
    other = make_bundle(keys, tmp_path / "other.bundle", seed=7)
    theirs = {m.name: d for m, d in members(other)}["artifacts/overlay.safetensors"]
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "artifacts/overlay.safetensors", theirs),
                   "overlay.safetensors", "SHA-256 mismatch")


def test_extra_member(home, good, tmp_path):
    bad = write_tar(tmp_path / "b.bundle", members(good) + [file_member("artifacts/extra.bin", b"x")])
    assert_refused(home, bad, "artifacts/extra.bin", "not listed")


def test_missing_member(home, good, tmp_path):
    bad = write_tar(tmp_path / "b.bundle", [(m, d) for m, d in members(good) if m.name != "artifacts/overlay.json"])
    assert_refused(home, bad, "overlay.json", "missing")


# -- manifest and signatures -----------------------------------------------------


def test_manifest_edited_after_signing(home, good, tmp_path):
    manifest = {m.name: d for m, d in members(good)}["manifest.json"]
    edited = manifest.replace(b'"version": 1', b'"version": 9')
    assert edited != manifest
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "manifest.json", edited), "bad signature", "0 of 2")


def _alice_and(keys, good, out, signer, *gpg_args):
    """The good bundle, signed by pinned alice and by `signer` (instead of bob)."""
    sigs, raw = signatures_of(good)
    return with_signatures(good, out, {keys.fpr["alice"]: sigs[keys.fpr["alice"]],
                                       keys.fpr[signer]: raw_signature(keys, signer, raw, *gpg_args)})  # fmt: skip


def test_signature_by_unpinned_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "carol")
    assert_refused(home, bad, "1 of 2", keys.fpr["carol"], "not pinned")


def test_signature_by_expired_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "old", "--faked-system-time", "20200101T120000")
    assert_refused(home, bad, "1 of 2", keys.fpr["old"], "expired")


def test_signature_by_revoked_key(home, keys, good, tmp_path):
    bad = _alice_and(keys, good, tmp_path / "b.bundle", "rev")
    assert_refused(home, bad, "1 of 2", keys.fpr["rev"], "revoked")


def test_one_of_two_required_signatures(home, keys, good, tmp_path):
    sigs, _ = signatures_of(good)
    bad = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: sigs[keys.fpr["alice"]]})
    assert_refused(home, bad, "1 of 2 required signatures", f"counted: {keys.fpr['alice']}; did not count: none")


def test_same_signer_twice(home, keys, good, tmp_path):
    sigs, _ = signatures_of(good)
    alice = sigs[keys.fpr["alice"]]
    bad = with_signatures(good, tmp_path / "b.bundle", {keys.fpr["alice"]: alice, keys.fpr["bob"]: alice})
    assert_refused(home, bad, "1 of 2", f"made by {keys.fpr['alice']}")


# -- versions and time -----------------------------------------------------------


def test_older_version_is_a_rollback(home, keys, good, base, vault, tmp_path):
    import_bundle(make_bundle(keys, tmp_path / "v2.bundle", version=2, seed=2), base, vault)
    assert_refused(home, good, "older version", "rollback")


def test_same_version_again_is_a_replay(home, good, base, vault):
    import_bundle(good, base, vault)
    assert_refused(home, good, "same version", "replay")


def test_expired_manifest(home, keys, tmp_path):
    bad = make_bundle(keys, tmp_path / "b.bundle", created=utc(-10), expires=iso(-1))
    assert_refused(home, bad, "expired")


def test_expiry_before_time_floor_when_clock_set_back(home, keys, base, vault, tmp_path):
    # A bundle created 30 days ahead moves the floor there: the clock now reads as set back.
    import_bundle(make_bundle(keys, tmp_path / "ahead.bundle", name="ahead", created=utc(30), expires="+60d"), base, vault)
    bad = make_bundle(keys, tmp_path / "b.bundle", expires=iso(10))
    assert_refused(home, bad, "time floor", "set back")


def test_overlay_bound_to_another_base(home, keys, tmp_path):
    other = "0" * 64
    bad = make_bundle(keys, tmp_path / "b.bundle", base=other, binds=other)
    assert_refused(home, bad, "bound to base", BASE_SHA)


# -- tar shape -------------------------------------------------------------------


def special(name, type_, **attrs):
    info = tarfile.TarInfo(name)
    info.type = type_
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, b""


@pytest.mark.parametrize("entry, words", [
    (file_member("../evil", b"x"), ("'..'",)),
    (file_member("/etc/evil", b"x"), ("absolute",)),
    (special("artifacts/link", tarfile.SYMTYPE, linkname="/etc/passwd"), ("symbolic link",)),
    (special("artifacts/hard", tarfile.LNKTYPE, linkname="manifest.json"), ("hard link",)),
    (special("artifacts/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), ("device",)),
], ids=["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_tar_member(home, good, tmp_path, entry, words):
    assert_refused(home, write_tar(tmp_path / "b.bundle", members(good) + [entry]), *words)


def test_too_many_members(home, good, tmp_path):
    many = [file_member(f"artifacts/f{i}", b"") for i in range(300)]
    assert_refused(home, write_tar(tmp_path / "b.bundle", members(good) + many), "more than 256 members")


def test_oversized_manifest(home, good, tmp_path):
    manifest = {m.name: d for m, d in members(good)}["manifest.json"]
    big = manifest[:-2] + b" " * 70_000 + manifest[-2:]
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "manifest.json", big), "manifest.json", "cap")


@pytest.mark.parametrize("cut", [0.0005, 0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated_bundle(home, good, tmp_path, cut):
    data = good.read_bytes()
    (tmp_path / "b.bundle").write_bytes(data[: int(len(data) * cut)])
    assert_refused(home, tmp_path / "b.bundle")


def test_random_bytes(home, tmp_path):
    (tmp_path / "b.bundle").write_bytes(os.urandom(20_000))
    assert_refused(home, tmp_path / "b.bundle", "b.bundle")


@pytest.mark.parametrize("manifest, words", [
    (b'{"schema": "appliance-manifest/1", "kind": ', ("invalid JSON",)),
    (b'{"schema": "appliance-manifest/1", "name": "\xff\xfe"}', ("UTF-8",)),
], ids=["invalid-json", "invalid-utf8"])
def test_bad_manifest_encoding(home, good, tmp_path, manifest, words):
    assert_refused(home, replace_member(good, tmp_path / "b.bundle", "manifest.json", manifest), "manifest.json", *words)
