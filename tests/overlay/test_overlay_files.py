"""Malformed overlay files are refused (exit 3, `OverlayRejected`) with a reason, an overlay for another
base too (`BindingMismatch`); well-formed ones load and round-trip."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from appliance.errors import BindingMismatch, OverlayRejected
from appliance.overlay.files import JSON_NAME, TENSORS_NAME, Overlay, load_overlay, overlay_files
from appliance.overlay.params import OverlayParams

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

BASE = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
D = 576


@pytest.fixture
def files():
    return overlay_files(Overlay(OverlayParams.random(D, seed=7), BASE, {"recipe": "random", "seed": 7}))


def _load(files):
    return load_overlay(files[JSON_NAME], files[TENSORS_NAME], base_sha256=BASE, hidden_size=D)


def _with_meta(files, **changes):
    meta = json.loads(files[JSON_NAME])
    meta.update(changes)
    return {**files, JSON_NAME: json.dumps(meta).encode()}


def _with_tensors(files, **tensors):
    p = _load(files).params
    arrays = {"A": p.A, "W": p.W, "B": p.B, **tensors}
    return {**files, TENSORS_NAME: save({k: v for k, v in arrays.items() if v is not None})}


def test_round_trip(files):
    ov = _load(files)
    again = overlay_files(ov)
    assert again == files
    assert ov.training == {"recipe": "random", "seed": 7}


def _refused(files, *words, error=OverlayRejected):
    with pytest.raises(error) as e:
        _load(files)
    assert e.value.exit_code == 3
    for w in words:
        assert w in str(e.value), str(e.value)


def test_wrong_format_string(files):
    _refused(_with_meta(files, format="takens-lora/2"), "format")


def test_wrong_binding(files):
    _refused(_with_meta(files, base_model_sha256="0" * 64), "0" * 64, BASE, error=BindingMismatch)


def test_wrong_hidden_size(files):
    meta_changed = _with_meta(files, hidden_size=512)
    _refused(meta_changed, "shape")  # the tensors no longer match the declared size
    p = OverlayParams.random(512)
    other = overlay_files(Overlay(p, BASE))
    _refused(other, "hidden_size 512", error=BindingMismatch)


@pytest.mark.parametrize(
    "changes,word",
    [
        ({"rank": 0}, "rank"),
        ({"delays": [1, 2]}, "delays"),
        ({"delays": [0, 2, 2, 4, 8]}, "delays"),
        ({"alpha": "big"}, "alpha"),
        ({"activation": "relu"}, "activation"),
        ({"base_model_sha256": "XYZ"}, "base_model_sha256"),
        ({"training": []}, "training"),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_bad_header_fields(files, changes, word):
    _refused(_with_meta(files, **changes), word)


def test_missing_key(files):
    meta = json.loads(files[JSON_NAME])
    del meta["rank"]
    _refused({**files, JSON_NAME: json.dumps(meta).encode()}, "missing keys", "rank")


def test_not_json_and_not_utf8(files):
    _refused({**files, JSON_NAME: b"{not json"}, "JSON")
    _refused({**files, JSON_NAME: b"\xff\xfe{}"}, "UTF-8")
    _refused({**files, JSON_NAME: b"[]"}, "object")


def test_wrong_shapes(files):
    _refused(_with_tensors(files, A=np.zeros((4, D), np.float32)), "A has shape")
    _refused(_with_tensors(files, W=np.zeros((3, 8), np.float32)), "W has shape")


def test_wrong_dtype(files):
    p = _load(files).params
    _refused(_with_tensors(files, B=p.B.astype(np.float16)), "float32")


def test_nan_and_inf(files):
    p = _load(files).params
    B = p.B.copy()
    B[3, 2] = np.nan
    _refused(_with_tensors(files, B=B), "NaN")
    A = p.A.copy()
    A[0, 0] = np.inf
    _refused(_with_tensors(files, A=A), "infinite")


def test_missing_and_extra_tensors(files):
    _refused(_with_tensors(files, W=None), "exactly tensors")
    _refused(_with_tensors(files, extra=np.zeros(2, np.float32)), "exactly tensors")


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -100])
def test_truncated_safetensors(files, cut):
    _refused({**files, TENSORS_NAME: files[TENSORS_NAME][:cut]}, "safetensors")


def test_lying_header_length(files):
    data = bytearray(files[TENSORS_NAME])
    data[:8] = struct.pack("<Q", 10**12)
    _refused({**files, TENSORS_NAME: bytes(data)}, "safetensors")


def test_size_caps(files):
    _refused({**files, JSON_NAME: b" " * (64 * 1024 + 1)}, "cap")
