"""The bench completes whatever one measurement does: a failure, even a segfault, costs its own rows only;
and every llama-cpp-python reference loads with our model parameters (no AMX repacking)."""

import ctypes
import re
import sys
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # the bench is scripts beside each other, not a package

from contained import FAILED, measure_all  # noqa: E402
from native import peak_rss_rows  # noqa: E402


def rows_of(n: int) -> list[tuple]:
    return [(f"row {i}", str(i), "", "") for i in range(n)]


def raises() -> list[tuple]:
    raise RuntimeError("the reference\nwould not load")


def segfaults() -> list[tuple]:
    ctypes.string_at(0)  # a read of address 0: SIGSEGV, as llama.cpp's AMX repacking ends a process
    return []


def test_a_failing_measurement_prints_its_reason_and_the_run_goes_on(capfd):
    planned = [("first", partial(rows_of, 2)), ("raises", raises), ("dies", segfaults), ("last", partial(rows_of, 1))]
    rows = measure_all(planned)
    assert rows == [
        ("row 0", "0", "", ""),
        ("row 1", "1", "", ""),
        ("raises: RuntimeError: the reference would not load", FAILED, "", ""),
        ("dies: killed by SIGSEGV", FAILED, "", ""),
        ("row 0", "0", "", ""),
    ]
    said = capfd.readouterr().err
    assert re.findall(r"^\[(\d)/4\] (\w+) \.\.\.$", said, re.M) == [("1", "first"), ("2", "raises"), ("3", "dies"), ("4", "last")]


def test_every_reference_in_bench_loads_through_reference_llama():
    """llama-cpp-python's `Llama` with its own defaults repacks weights for AMX, which ends the process where the
    kernel does not grant the tile state: the bench names it only through `reference_llama` (our model params)."""
    plain = [
        f"{path.name}:{n}"
        for path in sorted(BENCH.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bLlama\(|from llama_cpp import", line)
    ]
    assert not plain, plain


def test_peak_rss_rows_measure_both_processes(model):
    ours, theirs = peak_rss_rows(model.path, "Name a colour.", 2)[::-1]
    assert ours[0].startswith("peak RSS of one `appliance ask`") and theirs[0].startswith("peak RSS of one chat answer")
    assert float(ours[1]) > 50 and float(theirs[1]) > 50  # MiB: each process held the model


def test_a_synthetic_llama_base_is_what_its_shape_says_and_llama_cpp_runs_it(tmp_path, model):
    """bench/scale_rows.py's bases: the shape and quantisation asked, the embedded model's tokenizer, and
    random weights llama.cpp loads and decodes (tiny here; 1B to 8B in the bench)."""
    from scale_rows import QUANT, Shape, write_llama

    from appliance.runtime.embeddings import EmbeddingTable
    from appliance.runtime.sampler import GREEDY
    from appliance.runtime.session import Runtime, Session
    from appliance.trust.builtin import VerifiedModel

    shape = Shape(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    for quant in ("Q8_0", "Q4_K"):
        path = tmp_path / f"tiny-{quant}.gguf"
        write_llama(path, shape, QUANT[quant], model.path)
        table = EmbeddingTable(path)
        try:
            assert (table.n_embd, table.n_layer, table._qtype.name) == (256, 2, quant)
            assert (table.numbers["attention.head_count"], table.numbers["attention.head_count_kv"]) == (4, 2)
        finally:
            table.close()
        runtime = Runtime(VerifiedModel("tiny", 1, path, ""), n_ctx=256, n_threads=1)
        try:
            assert (runtime.engine.n_vocab, runtime.template.name) == (49152, "chatml")  # SmolLM2's tokenizer and template
            assert len(Session(runtime, settings=GREEDY).generate("Hello there", max_tokens=4).tokens) == 4
        finally:
            runtime.close()


def test_a_measured_peak_is_the_commands_own_not_the_large_bench_process_it_started_from():
    """A child's ru_maxrss starts at its parent's resident size: the scale rows run from a process that held a
    multi-GB base, whose size must not show up in the `appliance ask` they measure."""
    import os

    from native import _peak_rss_mib

    held = bytearray(600 << 20)  # the bench process, large
    held[::4096] = b"x" * len(held[::4096])  # resident, every page
    peak = _peak_rss_mib([sys.executable, "-c", "x = bytearray(100 << 20); x[::4096] = b'y' * len(x[::4096])"], dict(os.environ))
    assert 100 < peak < 400, peak
