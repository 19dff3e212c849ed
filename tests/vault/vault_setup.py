"""Constants the vault tests share. A plain module (not conftest.py), so test files import it by a
name no other test directory uses (two `conftest` modules on one path shadow each other)."""

PASSPHRASE = b"correct horse battery staple"


def install_fake_overlay(home, vault, name: str, version: int, payload: bytes):
    """What the overlay store does at import: a fresh data key, the artifact encrypted under it
    (the store's own import, through gpg and the trust chain, is tested in tests/trust)."""
    from appliance.store.at_rest import data_key_id
    from appliance.vault import EncryptedWriter

    rel = f"overlays/{name}/{version}/overlay.safetensors.enc"
    (home / rel).parent.mkdir(parents=True, exist_ok=True)
    key = vault.new_data_key(data_key_id("overlay", name, version), files=[rel])
    with open(home / rel, "wb") as dst:
        writer = EncryptedWriter(key, dst, context=data_key_id("overlay", name, version).encode())
        writer.write(payload)
        writer.close()
    return home / rel
