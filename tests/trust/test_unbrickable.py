"""State that a crash or a correctly signed oddity must not brick: each refusal leaves the store usable, each
crash (SIGKILL injected by `strace` at the Nth syscall) leaves the old or the new state, and the next
command works without `erase all`."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from bundles import BASE_SHA, members, overlay_dir, raw_signature, utc, write_tar
from bundles import make_bundle as overlay_bundle
from helpers import PASSPHRASE, appliance, assert_refused, error_line, ok, tree_digest
from images import forged_image_bundle, synthetic_layout

from appliance.editor_scratch import EDITOR_DIR, scratch_file
from appliance.errors import EnvironmentRefused
from appliance.journal import read_session, sessions
from appliance.state_files import StateFileDamaged, StateForged, parse_state, state_bytes
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.untrusted_json import MAX_DEPTH, JsonRejected, load_untrusted
from appliance.vault import Vault, sealed_state
from appliance.vault.sealed_state import SealedState

DEEP = b"[" * 30_000 + b"]" * 30_000  # under every file's size cap; far past Python's recursion limit


def resigned(keys, src: Path, out: Path, edit) -> Path:
    """`src` with its manifest changed by `edit(doc)` and signed again by alice and bob: what a build station signs."""
    old = {m.name: d for m, d in members(src)}
    doc = json.loads(old["manifest.json"])
    raw = (json.dumps(edit(doc), indent=2) + "\n").encode()
    entries = [(m, raw if m.name == "manifest.json" else d) for m, d in members(src) if not m.name.startswith("signatures/")]
    sigs = [(f"signatures/{keys.fpr[s]}.asc", raw_signature(keys, s, raw)) for s in ("alice", "bob")]
    return write_tar(out, entries + [(tarfile.TarInfo(n), d) for n, d in sigs])


def killed_at(syscall: str, n: int, *args: str) -> subprocess.CompletedProcess:
    """`appliance ARGS`, SIGKILLed by strace at its Nth `syscall` (its own: children are not traced)."""
    inject = ["strace", "-o", "/dev/null", "-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=SIGKILL:when={n}"]
    return appliance(*args, prefix=inject)


# -- Medium 3: versions are JSON integers by type --------------------------------------------------------


@pytest.mark.parametrize("edit", [{"version": 1.0}, {"version": True}], ids=["float", "bool"])
def test_a_version_that_is_not_a_json_integer_is_refused_and_the_store_stays_usable(home, keys, tmp_path, edit):
    good = overlay_bundle(keys, tmp_path / "care.bundle")
    assert_refused(
        home, resigned(keys, good, tmp_path / "b.bundle", lambda d: {**d, **edit}), "manifest-schema-violation", "version"
    )
    sized = resigned(
        keys, good, tmp_path / "s.bundle", lambda d: {**d, "artifacts": [{**a, "size": float(a["size"])} for a in d["artifacts"]]}
    )
    assert_refused(home, sized, "manifest-schema-violation", "size")
    ok("update", "import", str(good))
    assert "care" in ok("update", "list")


# -- Medium 7: a bundle from the future ------------------------------------------------------------------


def test_a_bundle_created_beyond_the_clock_tolerance_is_refused_before_it_moves_the_time_floor(home, keys, tmp_path):
    future = overlay_bundle(keys, tmp_path / "future.bundle", created=utc(365 * 70), expires="+30d")
    assert_refused(home, future, "manifest-from-future", "plus the tolerance")
    # Within the tolerance (a build station's clock half an hour ahead) it is accepted; a correctly dated one after it too.
    ok("update", "import", str(overlay_bundle(keys, tmp_path / "soon.bundle", name="soon", created=utc(0.5 / 24))))
    ok("update", "import", str(overlay_bundle(keys, tmp_path / "care.bundle")))


# -- Medium 4: a crash at the very first commit of store/state.json ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("syscall", ["rename", "fsync"])
def test_a_first_import_killed_at_any_rename_or_fsync_leaves_a_usable_store(pinned_home, keys, tmp_path, monkeypatch, syscall):
    src, pp = pinned_home
    assert not (src / "store" / "state.json").exists()  # a fresh appliance: the first import writes it
    bundle = overlay_bundle(keys, tmp_path / "care.bundle")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(pp))
    points = 0
    for n in range(1, 200):
        home = tmp_path / f"home-{n}"
        shutil.copytree(src, home, symlinks=True)
        monkeypatch.setenv("APPLIANCE_HOME", str(home))
        if killed_at(syscall, n, "update", "import", str(bundle)).returncode != -9:
            break  # past the last one
        points += 1
        again = appliance("update", "import", str(bundle))  # reads the state first: a forged one refuses
        committed = again.stderr.rstrip().endswith("[version-not-newer]")
        assert again.returncode == 0 or committed, f"killed at {syscall} #{n}: {again.stderr}"
        ok("verify")
        shutil.rmtree(home)
    assert points > 3


# -- Low (issue 28): a failed sealed write does not leave its digest accepted -----------------------------


def test_a_failed_sealed_write_puts_the_old_digests_back(home, vault, monkeypatch):
    policy = home / "trust" / "policy.json"
    before = vault.file_digests("trust/policy.json")
    planted = state_bytes({**json.loads(policy.read_text()), "threshold": 1})

    def disk_full(path, data, mode=0o600):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sealed_state, "atomic_write", disk_full)
    with pytest.raises(EnvironmentRefused):
        SealedState(vault).write(policy, planted)
    monkeypatch.undo()
    assert vault.file_digests("trust/policy.json") == before
    # So the bytes that failed to land cannot be planted by hand later.
    policy.write_bytes(planted)
    with pytest.raises(StateForged):
        SealedState(vault).read(policy)


def test_a_first_write_that_fails_leaves_the_file_never_written(home, vault, monkeypatch):
    path = home / "store" / "state.json"
    monkeypatch.setattr(sealed_state, "atomic_write", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(EnvironmentRefused):
        SealedState(vault).write(path, b"{}\n")
    monkeypatch.undo()
    assert SealedState(vault).read(path) is None
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"{}\n")
    with pytest.raises(StateForged, match="not written by this appliance"):
        SealedState(vault).read(path)


# -- Medium 6: a plaintext prompt from $EDITOR ------------------------------------------------------------


def _crash_in_the_editor(home: Path, text: str) -> Path:
    """A process killed (SIGKILL) while its prompt is in the editor: the scratch file it leaves."""
    code = (
        "import os, signal, sys; from pathlib import Path; from appliance.editor_scratch import scratch_file\n"
        "with scratch_file(Path(sys.argv[1]), sys.argv[2]) as path:\n"
        "    print(path, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(home), text], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    left = Path(r.stdout.strip())
    assert left.read_text() == text
    return left


def _plaintext_under(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and text.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    "erase", [("erase", "all", "--yes"), ("erase", "logs", "--yes"), ("kill", "--wipe")], ids=["all", "logs", "kill-wipe"]
)
def test_every_erase_that_promises_nothing_readable_destroys_a_crashed_editors_prompt(home, erase):
    ok("trust", "threshold", "1")  # a journal session for `erase logs` to erase
    secret = "the launch code is 0000"
    left = _crash_in_the_editor(home, secret)
    ok(*erase)
    assert not left.exists() and _plaintext_under(home, secret) == []


def test_a_planted_editor_symlink_is_not_followed(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    (elsewhere / "keep" / "notes.txt").write_text("the attacker's target")
    elsewhere.chmod(0o755)
    before = tree_digest(elsewhere)
    (home / EDITOR_DIR).symlink_to(elsewhere)
    with scratch_file(home, "a private prompt") as path:
        assert path.resolve().is_relative_to(home.resolve()) and path.read_text() == "a private prompt"
        assert _plaintext_under(elsewhere, "a private prompt") == []
    editor = home / EDITOR_DIR
    assert not editor.is_symlink() and editor.is_dir() and stat.S_IMODE(editor.stat().st_mode) == 0o700
    assert tree_digest(elsewhere) == before and stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    # The erases' wipe does not follow one either.
    shutil.rmtree(editor)
    editor.symlink_to(elsewhere)
    ok("erase", "all", "--yes")
    assert tree_digest(elsewhere) == before and not editor.exists()


# -- Low: deeply nested JSON from outside ----------------------------------------------------------------


def test_json_from_outside_is_depth_capped():
    assert load_untrusted(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(JsonRejected, match="nested deeper"):
        load_untrusted(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert load_untrusted(b'{"a": "[[[[' + b"[" * 100 + b'"}') == {"a": "[[[[" + "[" * 100}  # brackets in a string are text
    with pytest.raises(StateFileDamaged, match="nested deeper"):
        parse_state(Path("store/state.json"), DEEP, "appliance-store/1")


def test_a_signed_overlay_json_nested_too_deeply_is_refused(home, keys, tmp_path):
    json_file, tensors = overlay_dir(tmp_path, seed=1)
    json_file.write_bytes(DEEP)
    bad = tmp_path / "deep.bundle"
    create_bundle(bad, kind="overlay", name="care", version=1, artifacts=[json_file, tensors], binds_base=BASE_SHA)
    for signer in ("alice", "bob"):
        sign_bundle(bad, keys.fpr[signer], keys.home)
    assert_refused(home, bad, "overlay-rejected", "overlay.json", "nested deeper")


# -- Low: OCI manifest keys that differ only in case -------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: {**d, "Layers": []}, ("'Layers'", "only in case")),
        (lambda d: {**d, "Config": {**d["config"], "digest": "sha256:" + "e" * 64}}, ("'Config'", "only in case")),
        (lambda d: {**d, "layers": [{**d["layers"][0], "Digest": d["layers"][0]["digest"]}]}, ("layers[0]", "'Digest'")),
        (lambda d: {**d, "layers": [{**d["layers"][0], "urls": ["http://example.org/x"]}]}, ("'urls'", "not a key")),
        (lambda d: {**d, "schemaVersion": 2.0}, ("not an OCI",)),
    ],
    ids=["Layers", "Config", "Digest", "urls", "schema-2.0"],
)
def test_an_oci_manifest_with_unknown_or_case_variant_keys_is_refused(home, keys, tmp_path, change, words):
    layout = synthetic_layout(tmp_path / "layout")
    doc = json.loads((layout / "manifest.json").read_bytes())
    (layout / "manifest.json").write_text(json.dumps(change(doc)))
    assert_refused(home, forged_image_bundle(keys, tmp_path / "b.bundle", layout), "image-layout-invalid", *words)


# -- Low: an interrupted erase is finished by running it again ---------------------------------------------


def test_an_erase_killed_after_its_keys_went_is_finished_by_running_it_again(home, keys, tmp_path):
    ok("update", "import", str(overlay_bundle(keys, tmp_path / "care.bundle")))
    # The erase's first table write destroys the keys; killed at its next rename the store still lists care v1.
    assert killed_at("rename", 2, "erase", "overlay", "care", "--yes").returncode == -9
    assert "crypto-erased" not in next(line for line in ok("update", "list").splitlines() if line.startswith("care"))
    out = ok("erase", "overlay", "care", "--yes")
    assert "overlay/care/1" in out and "proof:" in out
    assert "crypto-erased" in next(line for line in ok("update", "list").splitlines() if line.startswith("care"))
    error_line(appliance("erase", "overlay", "care", "--yes"), 6, "erased")


# -- Low: logs export --out ----------------------------------------------------------------------------------


def test_logs_export_writes_through_what_is_not_a_regular_file(home, tmp_path):
    ok("trust", "threshold", "1")
    sid = ok("logs", "list").split()[0]
    fifo, link = tmp_path / "fifo", tmp_path / "stdout"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    ok("logs", "export", sid, "--format", "jsonl", "--out", str(link))
    reader.join(timeout=60)
    assert link.is_symlink() and stat.S_ISFIFO(fifo.stat().st_mode)
    assert json.loads(got[0].splitlines()[0])["record"] == 1
    # Through a link to a regular file: the file gets the transcript, the link stays a link.
    target, link2 = tmp_path / "t.jsonl", tmp_path / "link.jsonl"
    target.write_text("old")
    link2.symlink_to(target)
    ok("logs", "export", sid, "--format", "jsonl", "--out", str(link2))
    assert link2.is_symlink() and json.loads(target.read_text().splitlines()[0])["record"] == 1
    before = tree_digest(home)
    error_line(
        appliance("logs", "export", sid, "--format", "md", "--out", str(tmp_path / "no" / "such" / "x.md")),
        3,
        "environment-refused",
    )
    assert tree_digest(home) == before


# -- Low: sampling options that are not finite numbers ----------------------------------------------------


@pytest.mark.parametrize("option", ["--temperature", "--repeat-penalty"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_sampling_option_that_is_not_a_finite_number_is_usage(home, option, value):
    before = tree_digest(home)
    line = error_line(appliance("ask", "hi", option, value, "--max-tokens", "1"), 2, "usage")
    assert option in line
    assert tree_digest(home) == before


# -- Low: base use journals the switch before it commits it -----------------------------------------------


def _switches(home: Path) -> int:
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        return sum(r["kind"] == "base-switch" for s in sessions(vault) for r in read_session(vault, s))
    finally:
        vault.zeroize()


def test_base_use_killed_at_any_rename_never_leaves_an_unjournalled_switch(pinned_home, keys, tmp_path, monkeypatch):
    src, pp = pinned_home
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(pp))
    prepared = tmp_path / "prepared"
    shutil.copytree(src, prepared, symlinks=True)
    monkeypatch.setenv("APPLIANCE_HOME", str(prepared))
    ok("update", "import", str(overlay_bundle(keys, tmp_path / "care.bundle")))
    state = prepared / "store" / "state.json"
    before = state.read_bytes()
    for n in range(1, 50):
        home = tmp_path / f"home-{n}"
        shutil.copytree(prepared, home, symlinks=True)
        monkeypatch.setenv("APPLIANCE_HOME", str(home))
        if killed_at("rename", n, "base", "use", "embedded").returncode != -9:
            break
        committed = (home / "store" / "state.json").read_bytes() != before
        assert not committed or _switches(home) == 1, f"killed at rename #{n}: a switch committed but not journalled"
        shutil.rmtree(home)
    else:
        raise AssertionError("base use never ran to its end")
    assert (home / "store" / "state.json").read_bytes() != before and _switches(home) == 1  # the unkilled run
