"""Overlays encrypted at rest, end to end through the real CLI: import, load, erase, wipe, tampering.

Here rather than under tests/vault because it needs the trust fixtures (signer keys, pinned homes);
the vault's own unit tests stay in tests/vault.
"""

import json
import subprocess
import sys

import pytest
from bundles import make_bundle
from helpers import PASSPHRASE, appliance, error_line, ok, tree_digest

from appliance.store.layout import Store
from appliance.vault import Vault

ASK = ("ask", "Name a colour.", "--temperature", "0", "--max-tokens", "4")


def fails(code, reason, *args, **kw):
    """`appliance ARGS` fails with exit `code` and the reason code `reason`; its one error line."""
    return error_line(appliance(*args, **kw), code, reason)


def bundle(keys, tmp_path, label, **kw):
    """A signed bundle in its own directory (make_bundle leaves the overlay's plaintext files beside it)."""
    d = tmp_path / label
    d.mkdir()
    return make_bundle(keys, d / f"{label}.bundle", **kw)


def overlay_plaintext(bundle):
    """The two overlay files as make_bundle wrote them beside the bundle."""
    d = next(bundle.parent.glob("overlay-*"))
    return (d / "overlay.safetensors").read_bytes(), (d / "overlay.json").read_bytes()


def assert_no_plaintext(home, bundle):
    tensors, meta = overlay_plaintext(bundle)
    # Windows every 32 bytes: any leaked run of 96 bytes or more contains one of them whole.
    windows = {tensors[i : i + 64] for i in range(0, len(tensors) - 64, 32)}
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert meta not in data, f"overlay.json in plaintext in {path}"
            leaked = next((w for w in windows if w in data), None)
            assert leaked is None, f"overlay.safetensors bytes in plaintext in {path}"


def stored_artifact(home, name="overlay.safetensors"):
    vault = Vault.unlock(home, PASSPHRASE.encode())
    try:
        store = Store.unlocked(vault)
        return store.object_dir(store.read_state().items["care"].active) / "artifacts" / name
    finally:
        vault.zeroize()


def test_no_plaintext_overlay_on_disk_after_import_and_ask(home, keys, tmp_path):
    care = bundle(keys, tmp_path, "care")
    ok("update", "import", str(care))
    assert_no_plaintext(home, care)
    assert ok(*ASK, "--overlay", "on").strip()
    assert_no_plaintext(home, care)
    (sid,) = [line.split()[0] for line in ok("logs", "list").splitlines() if "(trust-change)" not in line]
    ok("logs", "export", sid, "--format", "jsonl", "--out", str(tmp_path / "x.jsonl"))
    reply = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[-1])
    assert reply["overlay"]["name"] == "care" and reply["overlay"]["on"] is True


@pytest.mark.parametrize("how", ["wrong passphrase", "no passphrase"])
def test_import_refused_when_locked(home, keys, tmp_path, monkeypatch, how):
    care = bundle(keys, tmp_path, "care")
    before = tree_digest(home)
    if how == "wrong passphrase":
        (tmp_path / "wrong").write_text("not it\n")
        fails(4, "wrong-passphrase", "update", "import", str(care), "--passphrase-file", str(tmp_path / "wrong"))
    else:
        monkeypatch.delenv("APPLIANCE_PASSPHRASE_FILE")
        fails(4, "no-passphrase", "update", "import", str(care))
    assert tree_digest(home) == before


def test_flipped_ciphertext_byte_refused_at_load(home, keys, tmp_path):
    ok("update", "import", str(bundle(keys, tmp_path, "care")))
    path = stored_artifact(home)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    sessions_before = set((home / "journal").glob("*.journal"))  # the trust-change sessions of the pins
    assert "overlay.safetensors" in fails(3, "ciphertext-rejected", *ASK, "--overlay", "on")
    assert "overlay.safetensors" in fails(3, "verification-failed", "verify")
    assert set((home / "journal").glob("*.journal")) == sessions_before, "a refused load must not leave an empty session"


def test_erase_overlay_then_ask_is_erased_and_the_rest_still_works(home, keys, tmp_path):
    aux = bundle(keys, tmp_path, "aux", name="aux", seed=5)
    v1 = bundle(keys, tmp_path, "v1", seed=6)
    ok("update", "import", str(aux))
    ok("update", "import", str(v1))  # the last overlay imported is the one `--overlay on` loads
    ok(*ASK, "--overlay", "off")
    (sid,) = [line.split()[0] for line in ok("logs", "list").splitlines() if "(trust-change)" not in line]

    out = ok("erase", "overlay", "care", "--yes")
    assert "overlay/care/1" in out and "proof:" in out
    assert "overlay care was crypto-erased" in fails(6, "erased", *ASK, "--overlay", "on")
    assert "care overlay erased crypto-erased v1" in " ".join(ok("update", "list").split())
    assert "care (active overlay) crypto-erased (v1)" in ok("status")
    fails(6, "erased", "update", "rollback", "care")
    assert "replay" in fails(3, "version-not-newer", "update", "import", str(v1))  # an erased version cannot come back
    # The other overlay and the journal are untouched and still decrypt.
    verify = ok("verify")
    assert "aux v1 (active): ok" in verify and "care" not in verify
    assert ok("logs", "verify", sid).startswith("ok")
    vault = Vault.unlock(home, PASSPHRASE.encode())
    assert vault.key_ids("overlay/") == ["overlay/aux/1"]

    # A newer version installs and loads; rolling back to the erased one is refused with exit 6.
    v2 = bundle(keys, tmp_path, "v2", version=2, seed=7)
    ok("update", "import", str(v2))
    assert ok(*ASK, "--overlay", "on").strip()
    assert "care v1 was crypto-erased" in fails(6, "erased", "update", "rollback", "care")


def test_kill_wipe_and_erase_all_forget_every_overlay(home, keys, tmp_path):
    ok("update", "import", str(bundle(keys, tmp_path, "v1")))
    assert "overlay/care/1" in ok("kill", "--wipe")  # nothing running: wiped here
    fails(6, "erased", *ASK, "--overlay", "on")
    assert not list((home / "store" / "objects").iterdir())

    v2 = bundle(keys, tmp_path, "v2", version=2, seed=3)
    ok("update", "import", str(v2))
    ok("erase", "all", "--yes")
    # The store and the trust policy were sealed by the destroyed vault: they go with it.
    assert not (home / "store").exists() and not (home / "trust").exists()
    ok("init")  # a fresh vault with the same passphrase file
    fails(5, "no-overlay", *ASK, "--overlay", "on")
    assert ok("update", "list") == ""
    assert "threshold: 2 of 0 pinned signers" in ok("trust", "list")
    assert "0 of 2 required signatures" in fails(3, "threshold-not-met", "update", "import", str(v2))  # nothing pinned any more


# A fresh interpreter that imports the erase module and the vault, nothing else of the package.
ERASE_ALONE = """
import sys
from pathlib import Path
from appliance.erase import erase_item
from appliance.vault import Vault
vault = Vault.unlock(Path(sys.argv[1]), sys.argv[2].encode())
try:
    print(erase_item(vault, "overlay", "care"))
finally:
    vault.zeroize()
"""


def test_an_overlay_erase_updates_the_store_whatever_the_process_imported(home, keys, tmp_path):
    """The store forgets an erased overlay because the erase calls it, not because a hook was registered
    by an import that this process might not have made."""
    ok("update", "import", str(bundle(keys, tmp_path, "care")))
    r = subprocess.run([sys.executable, "-c", ERASE_ALONE, str(home), PASSPHRASE], capture_output=True, text=True)
    assert r.returncode == 0 and "overlay/care/1" in r.stdout, r.stderr
    assert "care overlay erased crypto-erased v1" in " ".join(ok("update", "list").split())
    assert not list((home / "store" / "objects").iterdir())


def test_killed_import_orphan_key_is_harmless_and_erased(home, keys, tmp_path):
    """SIGKILL after the data key was recorded but before the commit: an orphan key, cleaned up by the next import."""
    ok("update", "import", str(bundle(keys, tmp_path, "v1", seed=1)))
    v2 = bundle(keys, tmp_path, "v2", version=2, seed=2)
    r = appliance("update", "import", str(v2), env={"APPLIANCE_TEST_CRASH_AT": "keyed"})
    assert r.returncode == -9
    vault = Vault.unlock(home, PASSPHRASE.encode())
    assert vault.key_ids("overlay/") == ["overlay/care/1", "overlay/care/2"]  # the orphan
    ok("verify")
    assert ok(*ASK, "--overlay", "on").strip()  # v1 still loads
    v3 = bundle(keys, tmp_path, "v3", version=3, seed=3)
    ok("update", "import", str(v3))
    assert vault.key_ids("overlay/") == ["overlay/care/1", "overlay/care/3"]
    assert "overlay/care/2" in vault.erased_key_ids("overlay/")
