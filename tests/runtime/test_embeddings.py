"""Our direct lookup of the embedding table agrees with the gguf library's full reader."""

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from appliance.runtime.embeddings import TOKEN_EMBEDDING, EmbeddingTable


def test_rows_equal_the_gguf_readers_dequantisation(model):
    table = EmbeddingTable(model.path)
    tensor = next(t for t in GGUFReader(str(model.path)).tensors if t.name == TOKEN_EMBEDDING)
    assert (table.n_vocab, table.n_embd) == (tensor.shape[1], tensor.shape[0])
    ids = np.arange(0, table.n_vocab, 97).tolist() + [table.n_vocab - 1]
    assert np.array_equal(table.rows(ids), dequantize(tensor.data[ids], tensor.tensor_type))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    import pytest

    from appliance.errors import ModelFailed

    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ModelFailed):
        EmbeddingTable(bogus)


def test_no_tokens_give_no_rows_for_a_k_quant_table(tmp_path):
    """An overlay prefill that keeps nothing asks for no rows; gguf's K-quant dequantisers fail on none."""
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "q4k.gguf"
    blocks = np.zeros((8, 144), dtype=np.uint8)  # 8 rows of one Q4_K block (256 weights): all zero
    w = GGUFWriter(path, "llama")
    w.add_embedding_length(256)
    w.add_tensor(TOKEN_EMBEDDING, blocks, raw_dtype=GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    table = EmbeddingTable(path)
    try:
        assert table.rows([]).shape == (0, 256)
        assert table.rows([2, 3]).shape == (2, 256)
    finally:
        table.close()


def test_rows_of_tokens_seen_are_kept_and_equal_fresh_ones(model, monkeypatch):
    """The rows of tokens seen are kept dequantised (an overlay-on step asks for one); what comes back is
    the same whether a row was kept, dequantised alone or beside others, and the kept ones stay bounded."""
    import appliance.runtime.embeddings as embeddings

    tensor = next(t for t in GGUFReader(str(model.path)).tensors if t.name == TOKEN_EMBEDDING)
    monkeypatch.setattr(embeddings, "ROW_CACHE_BYTES", 3 * 4 * tensor.shape[0])  # room for three rows
    table = EmbeddingTable(model.path)
    try:
        for ids in ([5, 3, 5], [3], [7, 5, 9, 11], [5, 5]):
            rows = table.rows(ids)
            assert np.array_equal(rows, dequantize(tensor.data[ids], tensor.tensor_type))
            assert len(table._seen) <= 4  # three, or the one call that asked for four distinct rows
        rows[0] += 1.0  # the caller owns what it gets: the kept row is untouched
        assert np.array_equal(table.rows([5]), dequantize(tensor.data[[5]], tensor.tensor_type))
    finally:
        table.close()
