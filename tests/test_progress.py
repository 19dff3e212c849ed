"""Progress of long work: the CLI's renderer off a terminal, and the steps the library reports."""

from contextlib import contextmanager

from appliance.cli.output import Shown
from appliance.trust.bundle import create_bundle


class Recorded:
    """`progress.Steps` that keeps each step's label, total and the bytes reported in it."""

    def __init__(self):
        self.steps: list[list] = []

    @contextmanager
    def step(self, label, total):
        self.steps.append([label, total, 0])
        yield lambda n: self.steps[-1].__setitem__(2, self.steps[-1][2] + n)


def test_off_a_terminal_a_large_step_is_ten_percent_lines_and_a_small_one_nothing(capsys):
    shown = Shown(min_total=1000)
    shown.terminal = False  # what a pipe or a log gets (the tmux test sees the bar)
    with shown.step("import x\x1b[2J", 1000) as advance:
        for _ in range(40):
            advance(25)
    with shown.step("small", 999) as advance:
        advance(999)
    with shown.step("llama.cpp", None) as advance:
        pass
    lines = capsys.readouterr().err.splitlines()
    # a label names a file from outside: escaped like every other line the CLI writes
    assert lines == [f"import x\\x1b[2J: {p}%" for p in range(10, 101, 10)] + ["llama.cpp ..."]


def test_bundle_create_reports_the_hash_and_the_write_of_every_byte(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.txt"
    a.write_bytes(b"x" * 3_000_000)
    b.write_text("notes\n")
    steps = Recorded()
    create_bundle(tmp_path / "out.bundle", kind="base-model", name="m", version=1, artifacts=[a, b], steps=steps)
    assert steps.steps == [
        ["hash a.bin", 3_000_000, 3_000_000],
        ["hash b.txt", 6, 6],
        ["write out.bundle", 3_000_006, 3_000_006],
    ]
