"""Control-vector files: malformed ones are refused (exit 3, `ControlVectorRejected`), one for another base
too (`BindingMismatch`); well-formed ones load and round-trip, through our two files and through
llama.cpp's control-vector GGUF."""

import json

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from safetensors.numpy import save

from appliance.errors import BindingMismatch
from appliance.overlay.control import (
    JSON_NAME,
    TENSORS_NAME,
    ControlVector,
    ControlVectorRejected,
    control_files,
    load_control,
)
from appliance.overlay.control_gguf import export_gguf, import_gguf

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

BASE = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
D, N_LAYER = 576, 30


def _vector(layers=(3, 7, 29), strength=2.5) -> ControlVector:
    rng = np.random.default_rng(3)
    directions = {n: rng.standard_normal(D).astype(np.float32) for n in layers}
    return ControlVector(directions, strength, BASE, {"method": "random", "seed": 3})


@pytest.fixture
def files():
    return control_files(_vector())


def _load(files, n_layer=N_LAYER):
    return load_control(files[JSON_NAME], files[TENSORS_NAME], base_sha256=BASE, hidden_size=D, n_layer=n_layer)


def _with_meta(files, **changes):
    meta = json.loads(files[JSON_NAME])
    meta.update(changes)
    return {**files, JSON_NAME: json.dumps(meta).encode()}


def _with_tensors(files, tensors):
    return {**files, TENSORS_NAME: save(tensors)}


def _refused(files, *words, error=ControlVectorRejected, n_layer=N_LAYER):
    with pytest.raises(error) as e:
        _load(files, n_layer)
    assert e.value.exit_code == 3
    for w in words:
        assert w in str(e.value), str(e.value)


def test_round_trip(files):
    cv = _load(files)
    assert control_files(cv) == files
    assert cv.layers == [3, 7, 29] and cv.strength == 2.5 and cv.provenance == {"method": "random", "seed": 3}


def test_applied_buffer_starts_at_block_1_and_is_zero_where_not_steered(files):
    cv = _load(files)
    buf = cv.applied(N_LAYER)
    assert buf.shape == (N_LAYER - 1, D)
    np.testing.assert_array_equal(buf[7 - 1], np.float32(2.5) * cv.directions[7])
    assert not buf[[i for i in range(N_LAYER - 1) if i + 1 not in (3, 7, 29)]].any()


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"format": "control-vector/2"}, "format"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"layers": [0, 3]}, "layers"),
        ({"layers": [7, 3]}, "layers"),
        ({"layers": []}, "layers"),
        ({"layers": [3, True]}, "layers"),
        ({"strength": float("nan")}, "NaN is not JSON"),  # refused by the JSON reader, before the field
        ({"strength": 1e6}, "strength"),
        ({"strength": "1"}, "strength"),
        ({"base_model_sha256": "X" * 64}, "base_model_sha256"),
        ({"provenance": []}, "provenance"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_bad_header(files, changes, word):
    _refused(_with_meta(files, **changes), word)


def test_missing_key(files):
    meta = json.loads(files[JSON_NAME])
    del meta["layers"]
    _refused({**files, JSON_NAME: json.dumps(meta).encode()}, "missing keys")


def test_not_json(files):
    _refused({**files, JSON_NAME: b"\xff{"}, "UTF-8 JSON")


def test_oversized_json(files):
    _refused({**files, JSON_NAME: b" " * (64 * 1024 + 1)}, "cap")


def test_not_safetensors(files):
    _refused({**files, TENSORS_NAME: b"garbage"}, "safetensors")


def test_tensors_must_match_the_listed_layers(files):
    v = _vector()
    tensors = {f"direction.{n}": v.directions[n] for n in (3, 7)}
    _refused(_with_tensors(files, tensors), "direction.29")


@pytest.mark.parametrize(
    "bad, word",
    [
        (np.zeros(D, dtype=np.float64), "float32"),
        (np.zeros(D + 1, dtype=np.float32), "shape"),
        (np.full(D, np.inf, dtype=np.float32), "NaN or infinite"),
        (np.full(D, 1e4, dtype=np.float32), "exceeds"),  # times strength 2.5: past the component bound
    ],
)
def test_bad_direction(files, bad, word):
    v = _vector()
    tensors = {f"direction.{n}": v.directions[n] for n in v.layers}
    tensors["direction.7"] = bad
    _refused(_with_tensors(files, tensors), "direction.7", word)


def test_binding(files):
    _refused(_with_meta(files, base_model_sha256="0" * 64), "0" * 64, BASE, error=BindingMismatch)
    _refused(files, "block 29", error=BindingMismatch, n_layer=29)  # the base has blocks 0..28
    with pytest.raises(BindingMismatch):
        load_control(files[JSON_NAME], files[TENSORS_NAME], base_sha256=BASE, hidden_size=D + 1, n_layer=N_LAYER)


def test_gguf_export_is_what_llama_cpp_reads(files, tmp_path):
    cv = _load(files)
    path = tmp_path / "cv.gguf"
    export_gguf(cv, path, model_hint="llama")
    reader = GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.layer_count").contents() == 3
    got = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(got) == ["direction.29", "direction.3", "direction.7"]
    np.testing.assert_array_equal(got["direction.7"], np.float32(2.5) * cv.directions[7])  # llama.cpp adds it unscaled


def test_gguf_round_trip_keeps_what_is_applied(files, tmp_path):
    cv = _load(files)
    path = tmp_path / "cv.gguf"
    export_gguf(cv, path, model_hint="llama")
    back = import_gguf(path, base_sha256=BASE, hidden_size=D, n_layer=N_LAYER)
    assert back.strength == 1.0 and back.layers == cv.layers
    np.testing.assert_array_equal(back.applied(N_LAYER), cv.applied(N_LAYER))
    assert back.provenance["model_hint"] == "llama" and len(back.provenance["gguf_sha256"]) == 64
    with pytest.raises(BindingMismatch):
        import_gguf(path, base_sha256=BASE, hidden_size=D, n_layer=20)


def _gguf(path, arch="controlvector", tensors=None):
    w = GGUFWriter(str(path), arch)
    for name, t in (tensors if tensors is not None else {"direction.1": np.ones(D, dtype=np.float32)}).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "arch, tensors, word",
    [
        ("llama", None, "architecture"),
        ("controlvector", {"direction.0": np.ones(D, dtype=np.float32)}, "out of 1.."),
        ("controlvector", {"token_embd.weight": np.ones(D, dtype=np.float32)}, "not a direction"),
        ("controlvector", {"direction.1": np.ones((2, D), dtype=np.float32)}, "float32 vector"),
        ("controlvector", {"direction.1": np.ones(D, dtype=np.float16)}, "float32 vector"),
        ("controlvector", {"direction.1": np.ones(D, dtype=np.float32), "direction.2": np.ones(8, dtype=np.float32)}, "lengths"),
        ("controlvector", {"direction.1": np.full(D, np.nan, dtype=np.float32)}, "NaN"),
        ("controlvector", {}, "no direction"),
    ],
)
def test_bad_gguf(tmp_path, arch, tensors, word):
    path = _gguf(tmp_path / "bad.gguf", arch, tensors)
    with pytest.raises(ControlVectorRejected) as e:
        import_gguf(path, base_sha256=BASE, hidden_size=D, n_layer=N_LAYER)
    assert word in str(e.value), str(e.value)


def test_truncated_gguf(files, tmp_path):
    path = tmp_path / "cv.gguf"
    export_gguf(_load(files), path, model_hint="llama")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ControlVectorRejected, match="not a readable GGUF"):
        import_gguf(path, base_sha256=BASE, hidden_size=D, n_layer=N_LAYER)


def test_cli_exports_imports_and_refuses_a_bad_gguf_with_exit_3(files, tmp_path, model):
    from helpers import appliance, error_line, ok

    from appliance.overlay.control import save_control

    save_control(_load(files), tmp_path / "cv")
    ok("overlay", "control-export", "--control", str(tmp_path / "cv"), "--out", str(tmp_path / "cv.gguf"))
    ok("overlay", "control-import", "--gguf", str(tmp_path / "cv.gguf"), "--out", str(tmp_path / "back"))
    back = load_control(
        (tmp_path / "back" / JSON_NAME).read_bytes(),
        (tmp_path / "back" / TENSORS_NAME).read_bytes(),
        base_sha256=model.sha256,
        hidden_size=D,
        n_layer=N_LAYER,
    )
    np.testing.assert_array_equal(back.applied(N_LAYER), _load(files).applied(N_LAYER))

    bad = _gguf(tmp_path / "bad.gguf", "llama")
    r = appliance("overlay", "control-import", "--gguf", str(bad), "--out", str(tmp_path / "never"))
    error_line(r, 3, "control-vector-rejected")
    assert not (tmp_path / "never").exists()

    (tmp_path / "cv" / JSON_NAME).write_bytes(_with_meta(files, base_model_sha256="0" * 64)[JSON_NAME])
    r = appliance("overlay", "control-export", "--control", str(tmp_path / "cv"), "--out", str(tmp_path / "x.gguf"))
    error_line(r, 3, "binding-mismatch")
    assert not (tmp_path / "x.gguf").exists()


def test_the_base_shape_read_from_the_header_is_what_llama_cpp_reads(model, gemma_gguf):
    """control-import takes a base's (n_embd, n_layer) from its GGUF header without loading it: the same
    numbers llama.cpp has once it has loaded the model, for both real bases."""
    from appliance.runtime.embeddings import base_shape
    from appliance.runtime.llama import LlamaEngine

    for path in (model.path, gemma_gguf):
        engine = LlamaEngine(path, n_ctx=64, n_threads=1)
        try:
            assert base_shape(path) == (engine.n_embd, engine.n_layer)
        finally:
            engine.close()
    assert base_shape(model.path) == (D, N_LAYER)
