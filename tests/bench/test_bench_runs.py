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
