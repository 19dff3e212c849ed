"""Chunked AES-256-GCM for large files under a data key (`vault.stream`): round trips, and every cut,
reordering or foreign context refused."""

import os
from pathlib import Path

import pytest

from appliance.vault import CiphertextRejected, EncryptedWriter, decrypt_chunks
from appliance.vault.stream import CHUNK_BYTES, HEADER, TAG_BYTES

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

FORMAT_1_STATE = Path(__file__).parent / "data" / "format-1-state"


def _decrypt(key, path, context=b"") -> bytes:
    return b"".join(decrypt_chunks(key, path, context))


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES])
def test_stream_roundtrip(tmp_path, size):
    key = bytearray(32)
    data = bytes(i % 251 for i in range(size))
    with open(tmp_path / "f.enc", "wb") as dst:
        writer = EncryptedWriter(key, dst, context=b"overlay/x/1")
        for i in range(0, size, 1000):  # fed in pieces that do not line up with the chunks
            writer.write(data[i : i + 1000])
        assert writer.close() == size
    assert _decrypt(key, tmp_path / "f.enc", context=b"overlay/x/1") == data
    assert size < 64 or data[:64] not in (tmp_path / "f.enc").read_bytes()


def _two_chunk_file(tmp_path):
    key = bytearray(b"k" * 32)
    with open(tmp_path / "f.enc", "wb") as dst:
        writer = EncryptedWriter(key, dst)
        writer.write(b"a" * (2 * CHUNK_BYTES + 10))
        writer.close()
    return key, (tmp_path / "f.enc").read_bytes()


def test_stream_detects_truncation_reordering_and_wrong_context(tmp_path):
    key, blob = _two_chunk_file(tmp_path)
    c = CHUNK_BYTES + TAG_BYTES
    h, c0, c1, rest = (
        blob[: HEADER.size],
        blob[HEADER.size : HEADER.size + c],
        blob[HEADER.size + c : HEADER.size + 2 * c],
        blob[HEADER.size + 2 * c :],
    )
    path = tmp_path / "f.enc"
    for bad in (h + c0 + c1, h + c0, h + c1 + c0 + rest, h + c0 + c1 + rest + b"x", blob[:-1]):
        path.write_bytes(bad)
        with pytest.raises(CiphertextRejected):
            _decrypt(key, path)
    path.write_bytes(blob)
    with pytest.raises(CiphertextRejected):
        _decrypt(key, path, context=b"another key id")
    with pytest.raises(CiphertextRejected):
        _decrypt(bytearray(32), path)


def test_files_under_one_data_key_are_sealed_under_keys_of_their_own(tmp_path, monkeypatch):
    """Two files of one version with the same random nonce prefix (a 56-bit collision, forced here) still
    never share a keystream: each is sealed under HKDF(data key, its own salt)."""
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n) if n == 7 else real(n))
    key, sealed = bytearray(b"k" * 32), []
    for name in ("a", "b"):
        with open(tmp_path / name, "wb") as dst:
            writer = EncryptedWriter(key, dst, context=b"overlay/x/1")
            writer.write(bytes(1000))
            writer.close()
        sealed.append((tmp_path / name).read_bytes()[HEADER.size :])
        assert _decrypt(key, tmp_path / name, context=b"overlay/x/1") == bytes(1000)
    assert sealed[0] != sealed[1]


def test_a_file_of_format_1_still_decrypts():
    """APPLENC1: the data key itself sealed the chunks (tests/vault/data/format-1-state, written by that format)."""
    path = FORMAT_1_STATE / "overlays" / "care" / "1" / "overlay.safetensors.enc"
    assert path.read_bytes().startswith(b"APPLENC1")
    key = bytearray.fromhex("40f9098e8f2b067e08fe2bddc61ab3ae3c6bf08eba94b19f7c69f999dda6daf5")
    assert _decrypt(key, path, context=b"overlay/care/1") == b"overlay weights " * 10
    with pytest.raises(CiphertextRejected):
        _decrypt(key, path, context=b"overlay/care/2")
