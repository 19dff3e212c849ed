"""Base models as signed updates: Gemma 3 270M imported, switched to, answered by, rolled back, erased.

One Gemma import is prepared per module (real CLI, two signers, inside `unshare -n`); each test
works on its own copy of that state dir. Refusals use small or embedded-model-sized GGUFs.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from bundles import make_bundle
from helpers import PASSPHRASE, appliance, assert_refused, error_line, ok, refused, tree_digest

from appliance.journal import read_session, sessions
from appliance.printable import printable
from appliance.trust.builtin import embedded_pin
from appliance.trust.bundle import create_bundle, sign_bundle
from appliance.vault import Vault
from appliance.vault.stream import CHUNK_BYTES, HEADER, TAG_BYTES

GEMMA = "gemma3-270m"
GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
OFFLINE = ["unshare", "-n"]
PROMPT = "What is an air gap?"


def base_bundle(keys, out: Path, artifacts: list[Path], *, name=GEMMA, version=1, signers=("alice", "bob")) -> Path:
    create_bundle(out, kind="base-model", name=name, version=version, artifacts=artifacts)
    for s in signers:
        sign_bundle(out, keys.fpr[s], keys.home)
    return out


@pytest.fixture(scope="module")
def prepared(keys, pinned_home, gemma_gguf, tmp_path_factory):
    """A state dir with overlay `care` (bound to the embedded SmolLM2) and Gemma v1 imported; embedded active."""
    tmp = tmp_path_factory.mktemp("bases")
    src, pp = pinned_home
    home = tmp / "home"
    shutil.copytree(src, home, symlinks=True)
    env = {"APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(pp)}
    ok("update", "import", str(make_bundle(keys, tmp / "care.bundle")), env=env)
    bundle = base_bundle(keys, tmp / "gemma.bundle", [gemma_gguf])
    imported = ok("update", "import", str(bundle), env=env, prefix=OFFLINE)
    return home, imported


@pytest.fixture
def ghome(prepared, tmp_path, monkeypatch, pinned_home):
    """A private copy of the prepared state dir (APPLIANCE_HOME points at it)."""
    dst = tmp_path / "home"
    shutil.copytree(prepared[0], dst, symlinks=True)
    monkeypatch.setenv("APPLIANCE_HOME", str(dst))
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(pinned_home[1]))
    return dst


def plaintext_found(home: Path, gguf: Path) -> list[str]:
    """Files under `home` holding any of three 4 KiB runs of the GGUF's plaintext (metadata, tensors, tail)."""
    size = gguf.stat().st_size
    with open(gguf, "rb") as f:
        needles = []
        for offset in (64 << 10, size // 2, size - 8192):
            f.seek(offset)
            needles.append(f.read(4096))
    found = []
    for p in home.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size >= 4096:
            data = p.read_bytes()
            found += [f"{p} @ {n}" for n, needle in enumerate(needles) if needle in data]
    return found


def last_records(home: Path) -> list[dict]:
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        return [r for s in sessions(vault) for r in read_session(vault, s)]
    finally:
        vault.zeroize()


def reference_reply(gguf: Path, prompt: str, max_tokens: int) -> tuple[str, int]:
    """llama-cpp-python's own create_completion on the plaintext file, greedy, on the prompt our template renders."""
    from appliance.runtime.chat_template import BuiltinTemplate
    from appliance.runtime.llama import reference_llama

    llm = reference_llama(gguf, n_ctx=1024, n_threads=2)
    try:
        text = BuiltinTemplate("gemma", "<bos>").render([{"role": "user", "content": prompt}])
        assert text == f"<bos><start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"  # Gemma's own format
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        out = llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0)
        return out["choices"][0]["text"], out["usage"]["completion_tokens"]
    finally:
        llm.close()


def test_gemma_end_to_end_offline(prepared, ghome, keys, gemma_gguf, tmp_path):
    alice, bob = keys.fpr["alice"], keys.fpr["bob"]
    assert f"installed base-model {GEMMA} v1, signed by" in prepared[1]
    listed = ok("base", "list", prefix=OFFLINE).splitlines()
    assert listed[0].startswith("* embedded (") and "(active)" in listed[0]
    (gemma,) = [line for line in listed if line.startswith(f"  {GEMMA}  v1")]
    assert GEMMA_SHA[:16] in gemma and alice in gemma and bob in gemma and "253.1 MB" in gemma and "expires 20" in gemma

    assert f"active base: {GEMMA} v1" in ok("base", "use", GEMMA, prefix=OFFLINE)
    assert ok("base", "list").splitlines()[1].startswith(f"* {GEMMA}  v1")
    r = appliance("ask", PROMPT, "--temperature", "0", "--repeat-penalty", "1", "--max-tokens", "24", prefix=OFFLINE)
    assert r.returncode == 0, r.stderr
    text, n_tokens = reference_reply(gemma_gguf, PROMPT, 24)
    assert r.stdout.rstrip("\n") == printable(text).rstrip("\n")
    records = last_records(ghome)
    switch = [x for x in records if x["kind"] == "base-switch"][-1]
    assert (switch["from"], switch["to"], switch["base"]["sha256"]) == ("embedded", GEMMA, GEMMA_SHA)
    user, reply = [x for x in records if x["kind"] == "message"][-2:]
    expected = {"name": GEMMA, "sha256": GEMMA_SHA, "version": 1, "signers": sorted([alice, bob]), "origin": "imported, signed"}
    assert user["base"] == reply["base"] == expected
    assert reply["text"] == text and reply["tokens"] == n_tokens  # token for token what create_completion says
    assert plaintext_found(ghome, gemma_gguf) == []  # after the import and after a chat

    status = ok("status")
    assert f"base:    {GEMMA} v1 (signed by" in status and GEMMA_SHA in status
    verified = ok("verify")
    assert f"base {GEMMA} v1 (signed by" in verified and f"{GEMMA} v1 (active): ok" in verified
    assert f"care v1 (active) (inactive: bound to base {embedded_pin().sha256[:16]}" in verified  # intact, not refused

    # v2 (with a licence text), then back to v1, then back to the embedded default
    licence = tmp_path / "LICENSE.txt"
    licence.write_text("Gemma terms of use\n")
    v2 = base_bundle(keys, tmp_path / "gemma-v2.bundle", [gemma_gguf, licence], version=2)
    assert f"installed base-model {GEMMA} v2" in ok("update", "import", str(v2), prefix=OFFLINE)
    assert ok("base", "list").splitlines()[1].startswith(f"* {GEMMA}  v2")
    assert f"{GEMMA}: v2 -> v1" in ok("update", "rollback", GEMMA, prefix=OFFLINE)
    assert ok("base", "list").splitlines()[1].startswith(f"* {GEMMA}  v1")
    assert "active base: smollm2" in ok("base", "use", "embedded", prefix=OFFLINE)
    assert ok("base", "list").splitlines()[0].startswith("* embedded")


def test_flipped_byte_in_stored_gemma_refused_at_next_start(ghome):
    ok("base", "use", GEMMA)
    (stored,) = ghome.glob("store/objects/*/artifacts/*.gguf")
    with open(stored, "r+b") as f:
        f.seek(stored.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    before = tree_digest(ghome)
    line = error_line(appliance("ask", "hello"), 3, "base-rejected")
    assert f"base {GEMMA} v1" in line and "nothing was loaded" in line and "failed authentication" in line
    assert tree_digest(ghome) == before
    error_line(appliance("status"), 3, "base-rejected")


def _chunk_at(path: Path, index: int) -> tuple[int, bytes]:
    """(offset, sealed bytes) of chunk `index` of a stored file (format 2: `vault.stream`)."""
    offset = HEADER.size + index * (CHUNK_BYTES + TAG_BYTES)
    with open(path, "rb") as f:
        f.seek(offset)
        return offset, f.read(CHUNK_BYTES + TAG_BYTES)


@contextmanager
def _spliced(path: Path, offset: int, old_len: int, new: bytes):
    """`path` with its bytes [offset, offset + old_len) replaced by `new` (what follows them is moved, so
    keep that short), put back as it was afterwards."""
    moved = len(new) != old_len
    with open(path, "r+b") as f:
        f.seek(offset)
        saved = f.read() if moved else f.read(old_len)
        f.seek(offset)
        f.write(new + saved[old_len:])
        if moved:
            f.truncate()
    try:
        yield
    finally:
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(saved)
            if moved:
                f.truncate()


def test_chunks_dropped_swapped_or_cut_are_refused_at_the_next_start(ghome, keys, gemma_gguf, tmp_path):
    """A start trusts the AEAD tags alone (docs/design.md): every STREAM attack on the stored base is exit 3 there."""
    notes = tmp_path / "notes.txt"
    notes.write_text("terms\n" * (CHUNK_BYTES // 2))  # three chunks: its chunk 1 is a full one, as the GGUF's
    ok("update", "import", str(base_bundle(keys, tmp_path / "v2.bundle", [gemma_gguf, notes], version=2)), prefix=OFFLINE)
    ok("base", "use", GEMMA)
    stored = list(ghome.glob("store/objects/*/artifacts/*.gguf"))
    (v2,) = [g for g in stored if (g.parent / "notes.txt").exists()]
    (v1,) = [g for g in stored if g != v2]
    whole = CHUNK_BYTES + TAG_BYTES
    last = (v2.stat().st_size - HEADER.size - 1) // whole  # the last chunk's index (the GGUF is no whole number of chunks)
    second_last, _ = _chunk_at(v2, last - 1)
    attacks = {  # (offset, bytes replaced, replacement)
        "a chunk dropped": (second_last, whole, b""),
        "a chunk swapped between artifacts": (_chunk_at(v2, 1)[0], whole, _chunk_at(v2.parent / "notes.txt", 1)[1]),
        "a chunk swapped between versions": (second_last, whole, _chunk_at(v1, last - 1)[1]),
        "the last chunk cut": (_chunk_at(v2, last)[0], whole, b""),
    }
    for attack, (offset, old_len, new) in attacks.items():
        with _spliced(v2, offset, old_len, new):
            before = tree_digest(ghome)
            line = error_line(appliance("ask", "hello"), 3, "base-rejected")
            assert "failed authentication" in line and "nothing was loaded" in line, attack
            assert tree_digest(ghome) == before, attack
    assert f"base:    {GEMMA} v2" in ok("status")  # put back, it starts: each refusal was its attack's


def test_overlay_bound_to_smollm2_refused_with_gemma_active(ghome):
    ok("base", "use", GEMMA)
    embedded = embedded_pin().sha256
    line = error_line(appliance("ask", "hello", "--overlay", "on"), 3, "binding-mismatch")
    assert f"bound to base {embedded[:16]}, active base is {GEMMA_SHA[:16]}" in line
    r = appliance("ask", "hello", "--max-tokens", "4")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert f"inactive: bound to base {embedded[:16]}, active base is {GEMMA_SHA[:16]}" in ok("update", "list")
    # back on the embedded default the overlay is the one it had
    ok("base", "use", "embedded")
    assert "inactive" not in ok("update", "list")


def test_erase_base_then_use_is_exit_6_and_kill_wipe_covers_bases(ghome, keys, gemma_gguf, tmp_path):
    ok("base", "use", GEMMA)
    out = ok("erase", "base", GEMMA, "--yes")
    assert f"destroyed: data keys of base/{GEMMA}/1" in out and "decryption of" in out
    assert ok("base", "list").splitlines()[0].startswith("* embedded")  # the erased base was active
    error_line(appliance("base", "use", GEMMA), 6, "erased")
    assert not list(ghome.glob("store/objects/*/artifacts/*.gguf"))
    # kill --wipe with nothing running: every overlay and every imported base
    out = ok("kill", "--wipe")
    assert "overlay/care/1" in out
    error_line(appliance("ask", "hi", "--overlay", "on"), 6, "erased")


def test_chat_on_gemma_names_it_and_its_overlay_key_refuses(ghome):
    from appliance.overlay.files import Overlay
    from appliance.runtime.sampler import GREEDY
    from appliance.runtime.session import Runtime
    from appliance.store.bases import active_model, close_model
    from appliance.ui import ApplianceApp, ChatCore
    from appliance.ui.chat import ChatScreen
    from appliance.ui.widgets import StatusBar

    ok("base", "use", GEMMA)
    with Vault.unlock(ghome, PASSPHRASE.encode()) as vault:
        model = active_model(vault)
    runtime = Runtime(model, n_ctx=512, n_threads=1)
    core = ChatCore(ghome, model, runtime, settings=GREEDY, max_tokens=8)

    core.unlock(PASSPHRASE.encode())  # as `appliance chat` does at the shell

    async def run() -> None:
        app = ApplianceApp(core)
        async with app.run_test() as pilot:
            for _ in range(200):
                if isinstance(app.screen, ChatScreen) and app.screen.query("#prompt"):
                    break
                await pilot.pause(0.05)
            status = app.screen.query_one(StatusBar)
            assert status.base == f"{GEMMA} {GEMMA_SHA[:8]}"
            app.clear_notifications()  # the one shown at unlock says the same: the key must say it again
            await app.screen.run_action("toggle_overlay")
            await pilot.pause()
            assert any(f"active base is {GEMMA_SHA[:16]}" in n.message for n in app._notifications)
            assert not core.status().item(Overlay.KIND).on

    try:
        asyncio.run(run())
    finally:
        core.close()
        runtime.close()
        close_model(model)


# -- refusals: each exit 3, nothing changed, no core file -------------------------------------


def with_template(src: Path, out: Path, template: str) -> Path:
    """A copy of the GGUF `src` whose chat template is `template`."""
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(src), str(out), "--chat-template", template,
                    "--force"], check=True, capture_output=True)  # fmt: skip
    return out


CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """GGUFs that must not install: cut short, random bytes, an architecture llama.cpp does not know, template
    payloads in no format llama.cpp knows, a special token id outside the vocabulary."""
    d = tmp_path_factory.mktemp("broken")
    src = embedded_pin().path
    out = {}
    (d / "truncated").mkdir()
    out["truncated"] = d / "truncated" / "model.gguf"
    with open(src, "rb") as f:
        out["truncated"].write_bytes(f.read(8 << 20))
    (d / "random").mkdir()
    out["random"] = d / "random" / "model.gguf"
    out["random"].write_bytes(np.random.default_rng(0).bytes(1 << 20))
    (d / "arch").mkdir()
    out["arch"] = d / "arch" / "model.gguf"
    shutil.copyfile(src, out["arch"])
    from gguf import GGUFReader

    reader = GGUFReader(out["arch"], "r+")
    field = reader.fields["general.architecture"]
    part = field.parts[field.data[0]]
    assert bytes(part) == b"llama"
    part[:] = np.frombuffer(b"llamb", dtype=np.uint8)  # same length: the file stays well-formed
    reader.data.flush()
    del reader, field, part
    marker = d / "escaped"
    payload = (
        "{{ cycler.__init__.__globals__.os.system('touch "
        + str(marker)
        + "') }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    out["template"] = with_template(src, d / "template" / "model.gguf", payload)
    out["dunder"] = with_template(
        src, d / "dunder" / "model.gguf", "{{ ''.__class__ }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    (d / "eos").mkdir()
    out["eos"] = d / "eos" / "model.gguf"
    shutil.copyfile(src, out["eos"])
    reader = GGUFReader(out["eos"], "r+")
    field = reader.fields["tokenizer.ggml.eos_token_id"]
    field.parts[field.data[0]][0] = 1_000_000  # the vocabulary has 49152
    reader.data.flush()
    del reader, field
    return out, marker


@pytest.mark.parametrize(
    "case, reason, words",
    [
        ("truncated", "gguf-rejected", ["truncated"]),
        ("random", "gguf-rejected", ["not a GGUF file"]),
        ("arch", "gguf-rejected", ["cannot load", "'llamb'"]),
        ("template", "chat-template-unsupported", ["none of llama.cpp's built-in templates", "never runs"]),
        ("dunder", "chat-template-unsupported", ["none of llama.cpp's built-in templates"]),
        ("eos", "gguf-rejected", ["tokenizer.ggml.eos_token_id is 1000000, outside the vocabulary of 49152"]),
    ],
)
def test_a_gguf_that_cannot_run_is_refused(home, keys, broken, tmp_path, case, reason, words):
    files, marker = broken
    bundle = base_bundle(keys, tmp_path / f"{case}.bundle", [files[case]], name=f"bad-{case}")
    assert_refused(home, bundle, reason, f"bad-{case} v1", *words)
    assert not marker.exists()  # the template's payload never ran
    assert not list(Path.cwd().glob("core*")) and not list(home.rglob("core*"))


def test_a_template_is_read_for_its_format_never_run(home, keys, tmp_path):
    """A template that would hang on any last message but the probe's old sample: its format (ChatML) is
    what counts; it never runs, so `ask` answers, and the journal names the built-in it was chatted with."""
    hang = "{% if messages[-1]['content'] != 'Why?' %}{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}"
    gguf = with_template(embedded_pin().path, tmp_path / "guarded" / "model.gguf", hang + CHATML)
    assert "installed base-model guarded v1" in ok(
        "update", "import", str(base_bundle(keys, tmp_path / "g.bundle", [gguf], name="guarded"))
    )
    ok("base", "use", "guarded")
    r = appliance("ask", "Hello", "--max-tokens", "4", "--temperature", "0", timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    reply = [x for x in last_records(home) if x["kind"] == "message"][-1]
    assert reply["chat_template"] == "chatml" and reply["base"]["name"] == "guarded"


def test_an_import_started_from_a_hostile_directory_runs_none_of_its_files(home, keys, broken, tmp_path):
    """`cd /media/usb && appliance update import x.bundle` with a `struct.py` and an `appliance/runtime/probe.py`
    beside the bundle, each of which would note that it ran and answer "accepted": the probe child starts
    isolated (`python -I`, in /), so neither runs and the verdict is the real probe's."""
    usb = tmp_path / "usb"
    (usb / "appliance" / "runtime").mkdir(parents=True)
    ran = tmp_path / "ran"
    accepted = '{"architecture": "llama", "n_vocab": 49152, "n_embd": 576, "chat_template": "chatml", "dumpable": false}'
    plant = f"open({str(ran)!r} + '-' + __name__, 'w').close()\nprint({accepted!r})\nraise SystemExit(0)\n"
    for path in ("struct.py", "appliance/runtime/probe.py"):
        (usb / path).write_text(plant)
    for path in ("appliance/__init__.py", "appliance/runtime/__init__.py"):
        (usb / path).write_text("")
    base_bundle(keys, usb / "stick.bundle", [broken[0]["random"]], name="stick")
    before = tree_digest(home)
    # The installed command, as an operator runs it (`python -m` would put the folder on the parent's own path).
    r = subprocess.run([Path(sys.executable).with_name("appliance"), "update", "import", "stick.bundle"], cwd=usb,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    r.stderr = "".join(line for line in r.stderr.splitlines(keepends=True) if not line.startswith("import: "))
    assert "not a GGUF file" in error_line(r, 3, "gguf-rejected")
    assert list(tmp_path.glob("ran*")) == []
    assert tree_digest(home) == before


def test_the_probe_child_hardens_itself_first():
    """execve made it dumpable again: the child sets PR_SET_DUMPABLE 0 itself and reads it back in its answer."""
    from appliance.runtime.probe import probe_gguf

    path = embedded_pin().path
    fd = os.open(path, os.O_RDONLY)
    try:
        facts = probe_gguf(fd, path.stat().st_size, "embedded")
    finally:
        os.close(fd)
    assert (facts.architecture, facts.chat_template, facts.dumpable) == ("llama", "chatml", False)


def test_base_bundle_with_one_signature_is_refused(home, keys, broken, tmp_path):
    bundle = base_bundle(keys, tmp_path / "one.bundle", [broken[0]["random"]], name="lonely", signers=("alice",))
    assert_refused(home, bundle, "threshold-not-met")


def _children() -> set[str]:
    return set(Path(f"/proc/self/task/{os.getpid()}/children").read_text().split())


def test_a_base_failing_its_hash_mid_copy_leaves_nothing_and_no_probe(home, vault, keys, tmp_path):
    """The probe child starts before the copy (it loads llama.cpp meanwhile); a copy that fails cancels it
    before it reads a byte, and the state is as it was."""
    from appliance.errors import HashMismatch
    from appliance.store import embedded_base
    from appliance.store.importer import import_bundle

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(np.random.default_rng(2).bytes(3 << 20))
    bundle = base_bundle(keys, tmp_path / "odd.bundle", [gguf], name="odd")
    data = bytearray(bundle.read_bytes())
    data[data.find(gguf.read_bytes()[:64]) + (2 << 20)] ^= 1  # same size, another SHA-256
    bundle.write_bytes(data)
    before, children = tree_digest(home), _children()  # earlier tests in this process may have left their own
    with pytest.raises(HashMismatch):
        import_bundle(bundle, embedded_base(), vault)
    assert tree_digest(home) == before
    assert _children() == children  # the probe cancelled and reaped


def test_base_bundle_must_hold_exactly_one_gguf(home, keys, broken, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    bundle = base_bundle(keys, tmp_path / "two.bundle", [broken[0]["random"], script], name="odd")
    assert_refused(home, bundle, "base-bundle-invalid", "run.sh")


def test_a_base_is_decrypted_into_a_sealed_memfd_never_a_file(tmp_path):
    """The loader's view: anonymous memory with the verified bytes, which nothing can change afterwards."""
    import hashlib
    import io

    from appliance.errors import HashMismatch, SizeMismatch
    from appliance.store.at_rest import Check, Sealing, decrypt_to_memfd, write_artifact
    from appliance.trust.manifest import Artifact

    data = np.random.default_rng(1).bytes(3 << 20)
    artifact = Artifact("model.gguf", hashlib.sha256(data).hexdigest(), len(data))
    manifest = type("M", (), {"kind": "base-model", "name": "m", "version": 1, "sha256": "ab" * 32, "artifacts": (artifact,)})()
    sealing = Sealing.fresh(manifest)
    (tmp_path / "artifacts").mkdir()
    write_artifact(io.BytesIO(data), tmp_path / "artifacts" / "model.gguf", artifact, sealing, None)
    assert data[:4096] not in (tmp_path / "artifacts" / "model.gguf").read_bytes()
    fd = decrypt_to_memfd(tmp_path, artifact, sealing, Check.TAGS)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:appliance:base/m/1")
        assert Path(f"/proc/self/fd/{fd}").read_bytes() == data
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)  # sealed: the bytes hashed are the bytes llama.cpp reads
    finally:
        os.close(fd)
    wrong = Artifact("model.gguf", "00" * 32, len(data))
    with pytest.raises(HashMismatch):
        decrypt_to_memfd(tmp_path, wrong, sealing, Check.SHA256)  # `verify`, `base use`
    # A start trusts the tags, which only bytes hashed at import were sealed under: no second SHA-256.
    os.close(decrypt_to_memfd(tmp_path, wrong, sealing, Check.TAGS))
    with pytest.raises(SizeMismatch):
        decrypt_to_memfd(tmp_path, Artifact("model.gguf", artifact.sha256, len(data) + 1), sealing, Check.TAGS)
    sealing.zeroize()


def test_build_base_is_the_named_or_the_active_base_verified_and_closed_after(ghome, capsys):
    """`--base NAME` of every build command: an installed base is its decrypted memfd (closed after the job),
    `embedded` the pinned default, no NAME the active base; each is said on stdout."""
    from appliance.cli.build_base import resolve_build_base
    from appliance.errors import NotFound

    with resolve_build_base(GEMMA, None) as model:
        assert (model.name, model.sha256, model.signers != ()) == (GEMMA, GEMMA_SHA, True)
        assert str(model.path).startswith("/proc/self/fd/") and model.path.stat().st_size == 253_113_024
    with pytest.raises(OSError):
        os.fstat(model.fd)
    assert f"base: {GEMMA} v1 (signed by " in capsys.readouterr().out
    for name in ("embedded", None):  # embedded is the active base here
        with resolve_build_base(name, None) as model:
            assert model.sha256 == embedded_pin().sha256
        assert capsys.readouterr().out.startswith(f"base: embedded ({embedded_pin().name} v")
    ok("base", "use", GEMMA)
    with resolve_build_base(None, None) as model:
        assert model.sha256 == GEMMA_SHA
    with pytest.raises(NotFound):
        with resolve_build_base("no-such-base", None):
            pass


def _accepted_record(home: Path) -> Path:
    (manifest,) = [m for m in home.glob("store/objects/*/manifest.json") if json.loads(m.read_bytes())["name"] == GEMMA]
    return manifest.parent / "accepted.json"


def test_a_start_reads_the_bases_shape_from_its_accepted_record_and_an_older_record_still_starts(ghome, monkeypatch):
    """The memory check's GGUF shape is read from the header once, at import, and kept in the sealed accepted
    record: a start does not walk the header (Gemma's 262,144 tokens) again, nor do binding checks decrypt the
    base for its hidden size and block count. A record written before the shape was kept (none in it) still
    starts, its shape read from the header as before; it is not rewritten."""
    from appliance.runtime import session
    from appliance.runtime.memory import gguf_shape
    from appliance.state_files import state_bytes
    from appliance.store import active, bases
    from appliance.store.bases import ActiveBase, active_base, close_model, open_model
    from appliance.vault.sealed_state import SealedState

    walked, decrypted, base_shape = [], [], active.base_shape
    monkeypatch.setattr(session, "gguf_shape", lambda path: walked.append(path) or gguf_shape(path))
    monkeypatch.setattr(active, "base_shape", lambda path: walked.append(path) or base_shape(path))
    monkeypatch.setattr(bases, "open_model", lambda *a, **k: decrypted.append(a) or open_model(*a, **k))
    ok("base", "use", GEMMA)
    vault = Vault.unlock(ghome, PASSPHRASE.encode())
    try:
        model = open_model(vault, GEMMA)
        try:
            assert model.shape == gguf_shape(model.path)  # kept at import: what the header says
            assert (model.shape.n_vocab, model.shape.n_embd, model.shape.n_layer) == (262_144, 640, 18)
            session.Runtime(model, n_ctx=256, sequences=1, n_threads=1).close()
            loaded, installed = ActiveBase(model), active_base(vault)
            assert (loaded.hidden_size, loaded.n_layer) == (installed.hidden_size, installed.n_layer) == (640, 18)
            assert walked == decrypted == []
        finally:
            close_model(model)

        record = _accepted_record(ghome)
        doc = json.loads(record.read_bytes())
        del doc["gguf_shape"]
        SealedState(vault).write(record, state_bytes(doc))  # as the import wrote it before the shape was kept
        sealed = record.read_bytes()
        model = open_model(vault, GEMMA)
        try:
            assert model.shape is None
            session.Runtime(model, n_ctx=256, sequences=1, n_threads=1).close()
            assert walked == [model.path]
        finally:
            close_model(model)
        installed = active_base(vault)
        assert (installed.hidden_size, installed.n_layer, len(decrypted)) == (640, 18, 1)  # decrypted to read them
        assert record.read_bytes() == sealed
    finally:
        vault.zeroize()


def test_the_kept_shape_edited_or_malformed_is_refused_at_the_start(ghome):
    """A smaller shape would let a base past the memory cap's check: edited outside the appliance the record is
    forged (exit 3, nothing changed), and one sealed with a malformed shape is damaged (exit 3)."""
    from appliance.state_files import state_bytes
    from appliance.vault.sealed_state import SealedState

    ok("base", "use", GEMMA)
    record = _accepted_record(ghome)
    doc = json.loads(record.read_bytes())
    sealed = record.read_bytes()
    record.write_text(json.dumps({**doc, "gguf_shape": [1] * len(doc["gguf_shape"])}))
    for command in (["ask", "hello"], ["status"]):
        refused(ghome, 3, "state-forged", *command, words=["accepted.json"])
    record.write_bytes(sealed)
    vault = Vault.unlock(ghome, PASSPHRASE.encode())
    try:
        SealedState(vault).write(record, state_bytes({**doc, "gguf_shape": doc["gguf_shape"][:3]}))
    finally:
        vault.zeroize()
    refused(ghome, 3, "state-file-damaged", "ask", "hello", words=["gguf_shape", "accepted.json"])


def _gguf_header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + version.to_bytes(4, "little") + n_tensors.to_bytes(8, "little") + n_kv.to_bytes(8, "little")


def _string_array(first: bytes, second_length: int) -> bytes:
    """Metadata key `tokenizer.ggml.tokens`: an array of 3 strings, the first `first`, the second claiming `second_length` bytes."""
    key = b"tokenizer.ggml.tokens"
    q = lambda n: n.to_bytes(8, "little")  # noqa: E731
    array = (9).to_bytes(4, "little") + (8).to_bytes(4, "little") + q(3)
    return q(len(key)) + key + array + q(len(first)) + first + q(second_length)


@pytest.mark.parametrize(
    "data, words",
    [
        (_gguf_header(3, 1 << 40, 1) + bytes(64), "more than"),
        (_gguf_header(3, 0, 1) + (1 << 62).to_bytes(8, "little") + bytes(64), "past the end"),  # a key 2**62 bytes long
        (_gguf_header(7, 0, 0) + bytes(64), "version 7"),
        (_gguf_header(3, 0, 1) + _string_array(b"abcd", 1000) + bytes(64), "past the end"),  # a vocabulary's 2nd string
        (_gguf_header(3, 0, 1) + _string_array(b"abcd", 1 << 62) + bytes(64), "past the end"),
    ],
)
def test_the_metadata_walk_refuses_counts_and_lengths_the_file_cannot_hold(tmp_path, data, words):
    """The child's own checks on crafted headers (pure Python, so safe to run here): each a refusal, never an allocation."""
    from appliance.runtime import probe

    path = tmp_path / "crafted.gguf"
    path.write_bytes(data)
    with pytest.raises(probe._Fault, match=words):
        probe._header(str(path), len(data))
        probe._metadata(str(path), len(data))


def test_each_base_remembers_its_overlay(ghome, keys, tmp_path):
    """An overlay made for Gemma (its SHA-256, hidden size 640) imports with Gemma active; switching bases
    brings back the overlay each base had, and the other one is listed inactive."""
    from appliance.overlay.files import Overlay, overlay_files
    from appliance.overlay.params import OverlayParams

    ok("base", "use", GEMMA)
    files = []
    for name, data in overlay_files(Overlay(OverlayParams.random(640, seed=5), GEMMA_SHA)).items():
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    bundle = tmp_path / "gcare.bundle"
    create_bundle(bundle, kind="overlay", name="gcare", version=1, artifacts=files, binds_base=GEMMA_SHA)
    for s in ("alice", "bob"):
        sign_bundle(bundle, keys.fpr[s], keys.home)
    ok("update", "import", str(bundle))
    assert "overlay: gcare v1 (active overlay)" in ok("status")
    ok("base", "use", "embedded")
    status = ok("status")
    assert "overlay: care v1 (active overlay)" in status and "overlay: gcare v1, manifest sha256" in status
    assert f"gcare  overlay  active v1  installed v1  inactive: bound to base {GEMMA_SHA[:16]}" in ok("update", "list")
    ok("base", "use", GEMMA)
    assert "overlay: gcare v1 (active overlay)" in ok("status")


def test_control_import_reads_the_active_bases_shape_from_its_header(ghome, tmp_path):
    """`overlay control-import` binds to the active base (Gemma here, decrypted into a memfd, never loaded):
    a vector of Gemma's shape (640 wide, blocks 1..17) is admitted for Gemma's SHA-256; one of SmolLM2's
    shape (576 wide) is refused (exit 3) and writes nothing; with `--base embedded` it is the one admitted."""
    from gguf import GGUFReader

    from appliance.overlay.control import ControlVector
    from appliance.overlay.control_gguf import export_gguf

    ok("base", "use", GEMMA)
    rng = np.random.default_rng(7)
    gemma_cv = ControlVector({n: rng.standard_normal(640).astype(np.float32) for n in (3, 17)}, 1.0, GEMMA_SHA)
    export_gguf(gemma_cv, tmp_path / "gemma.gguf", model_hint="gemma3")
    said = ok("overlay", "control-import", "--gguf", str(tmp_path / "gemma.gguf"), "--out", str(tmp_path / "cv"))
    assert said.startswith(f"base: {GEMMA} v1 (signed by ")
    meta = json.loads((tmp_path / "cv" / "control.json").read_text())
    assert (meta["base_model_sha256"], meta["hidden_size"], meta["layers"]) == (GEMMA_SHA, 640, [3, 17])

    smol_cv = ControlVector({3: np.ones(576, dtype=np.float32)}, 1.0, embedded_pin().sha256)
    export_gguf(smol_cv, tmp_path / "smol.gguf", model_hint="llama")
    r = appliance("overlay", "control-import", "--gguf", str(tmp_path / "smol.gguf"), "--out", str(tmp_path / "never"))
    error_line(r, 3, "binding-mismatch")
    assert not (tmp_path / "never").exists()

    # --base NAME binds to that base instead: the SmolLM2-shaped vector is admitted for the embedded one and
    # exported for it (its model hint SmolLM2's architecture); the Gemma vector is refused for it.
    embedded = ("--base", "embedded")
    said = ok("overlay", "control-import", "--gguf", str(tmp_path / "smol.gguf"), "--out", str(tmp_path / "smol"), *embedded)
    assert said.startswith("base: embedded (")
    assert json.loads((tmp_path / "smol" / "control.json").read_text())["base_model_sha256"] == embedded_pin().sha256
    ok("overlay", "control-export", "--control", str(tmp_path / "smol"), "--out", str(tmp_path / "back.gguf"), *embedded)
    hint = GGUFReader(tmp_path / "back.gguf").get_field("controlvector.model_hint")
    assert hint is not None and hint.contents() == "llama"
    r = appliance("overlay", "control-export", "--control", str(tmp_path / "cv"), "--out", str(tmp_path / "x.gguf"), *embedded)
    error_line(r, 3, "binding-mismatch")
    assert not (tmp_path / "x.gguf").exists()


def test_a_control_vector_binds_to_the_imported_bases_block_count(ghome, keys, tmp_path):
    """With Gemma active, a control vector for it is bound by Gemma's own hidden size (640) and block count (18),
    read from the decrypted GGUF; back on the embedded default it is listed inactive and refused when asked for."""
    from bundles import make_control_bundle

    ok("base", "use", GEMMA)
    gemma = dict(base=GEMMA_SHA, binds=GEMMA_SHA, hidden=640)
    assert_refused(ghome, make_control_bundle(keys, tmp_path / "b.bundle", layers=(18,), **gemma), "binding-mismatch",
                   "steers block 18", "blocks 1..17")  # fmt: skip
    ok("update", "import", str(make_control_bundle(keys, tmp_path / "g.bundle", layers=(6, 12), **gemma)))
    r = appliance("ask", PROMPT, "--control", "on", "--max-tokens", "4", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    ok("base", "use", "embedded")
    assert (
        f"terse  control-vector (active control vector)  active v1  installed v1  inactive: bound to base {GEMMA_SHA[:16]}"
        in ok("update", "list")
    )
    error_line(appliance("ask", PROMPT, "--control", "on", "--max-tokens", "2"), 3, "binding-mismatch")


def test_long_steps_show_progress_off_a_terminal_and_a_small_start_stays_quiet(ghome, gemma_gguf):
    """Off a terminal, work over a large artifact says how far it is in 10 % lines on stderr; a start
    (`status`, `ask`) does only for a base over 256 MiB, which Gemma (253 MB) is not."""
    tenths = [f"verify base {GEMMA} v1: {p}%" for p in range(10, 101, 10)]
    r = appliance("base", "use", GEMMA)
    assert r.returncode == 0 and r.stderr.splitlines() == tenths, r.stderr
    r = appliance("verify")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == tenths + [f"verify {GEMMA} v1 {gemma_gguf.name}: {p}%" for p in range(10, 101, 10)]
    r = appliance("status")
    assert r.returncode == 0 and r.stderr == "", r.stderr
