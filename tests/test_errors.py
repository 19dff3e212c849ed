"""Every `ApplianceError` has a reason code of its own, the CLI ends its `error:` line with it, and
docs/errors.md lists every code under its exit code.

The classes are found in the source (every class whose bases lead to `ApplianceError`), so a new
error type cannot slip past these checks by not being imported here.
"""

import ast
import errno
import importlib
import re
from pathlib import Path

import click
import pytest
from helpers import appliance, error_line

from appliance.cli import main as cli_main
from appliance.errors import ApplianceError, Refused

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# Failures that are not an ApplianceError, as the CLI reports them: (exit code, reason code).
CLI_ONLY = {(2, cli_main.USAGE), (1, cli_main.ABORTED), (1, cli_main.INTERNAL_ERROR)}


def error_classes() -> list[type[ApplianceError]]:
    defined = []  # (module, class name, names of its bases)
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))
                }
                defined.append((module, node.name, bases))
    errors = {"ApplianceError"}
    while grown := {name for _, name, bases in defined if name not in errors and errors & bases}:
        errors |= grown
    return [getattr(importlib.import_module(module), name) for module, name, _ in defined if name in errors]


CLASSES = error_classes()


def test_every_error_class_has_a_reason_code_of_its_own():
    assert all(issubclass(cls, ApplianceError) for cls in CLASSES)
    assert len(CLASSES) > 40  # the search found them
    codes = [cls.reason for cls in CLASSES]
    assert len(set(codes)) == len(codes), sorted(c for c in codes if codes.count(c) > 1)
    assert all(CODE.fullmatch(c) for c in codes), codes
    assert all(cls.exit_code in (1, 2, 3, 4, 5, 6) for cls in CLASSES)
    assert cli_main.ABORTED not in codes  # the CLI's own codes mean one thing each too


def test_a_subclass_gets_its_own_code_from_its_name():
    class SignatureTooOld(Refused):
        pass

    assert (SignatureTooOld.reason, SignatureTooOld.exit_code) == ("signature-too-old", 3)
    assert Refused.reason == "refused"


def _run_main(monkeypatch, capsys, error: BaseException) -> tuple[int, str]:
    """`appliance` with a command that raises `error`: its exit code and its stderr."""

    def fail():
        raise error

    monkeypatch.setattr(cli_main, "cli", click.Command("appliance", callback=fail))
    with pytest.raises(SystemExit) as done:
        cli_main.main([])
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_error_line_ends_with_the_reason_code(monkeypatch, capsys, cls):
    error = cls.__new__(cls)  # whatever its constructor takes: only the message matters here
    Exception.__init__(error, "what went wrong,\nand where")
    assert _run_main(monkeypatch, capsys, error) == (cls.exit_code, f"error: what went wrong, and where [{cls.reason}]\n")


@pytest.mark.parametrize("error, code, line", [
    (RuntimeError("a bug"), 1, "error: internal error: RuntimeError: a bug [internal-error]\n"),
    (click.Abort(), 1, "error: aborted [aborted]\n"),
    (click.BadParameter("not a number"), 2, "error: Invalid value: not a number [usage]\n"),
    (OSError(errno.ENOSPC, "No space left on device", "/state/x"), 3, "[environment-refused]\n"),
], ids=["bug", "abort", "usage", "environment"])  # fmt: skip
def test_failures_that_are_not_appliance_errors_have_codes_too(monkeypatch, capsys, error, code, line):
    exit_code, err = _run_main(monkeypatch, capsys, error)
    assert exit_code == code and err.startswith("error: ") and err.endswith(line), err


def test_the_real_cli_prints_the_code(home):
    assert "appliance init" in error_line(appliance("status"), 5, "not-initialised")
    error_line(appliance("no-such-command"), 2, "usage")


def _documented() -> dict[int, list[str]]:
    """docs/errors.md: exit code -> the reason codes in its table."""
    codes, exit_code = {}, None
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        if heading := re.match(r"## Exit (\d):", line):
            exit_code = int(heading[1])
            codes[exit_code] = []
        elif row := re.match(r"\| `([a-z0-9-]+)` \|", line):
            codes[exit_code].append(row[1])
    return codes


def test_the_docs_list_every_reason_code_under_its_exit_code():
    documented = _documented()
    listed = [(exit_code, code) for exit_code, codes in documented.items() for code in codes]
    assert len(set(listed)) == len(listed), "a code listed twice"
    expected = {(cls.exit_code, cls.reason) for cls in CLASSES} | CLI_ONLY
    assert set(listed) == expected, (
        f"missing from docs/errors.md: {sorted(expected - set(listed))}; not in the code: {sorted(set(listed) - expected)}"
    )
