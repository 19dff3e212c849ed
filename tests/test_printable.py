"""Text from outside is printed escaped: the function, and the CLI's one way to the terminal."""

import ast
import io
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import appliance.cli
from appliance.cli import output
from appliance.printable import printable

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

# What a terminal must never receive from outside text: C0 but newline and tab, DEL, C1,
# bidi embeddings, overrides and isolates, lone surrogates.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

ATTACKS = {
    "title (OSC 0)": ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    "clipboard (OSC 52)": ("\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07"),
    "clear screen (CSI)": ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    "carriage return": ("safe\rrm -rf", "safe\\x0drm -rf"),
    "backspace": ("yes\x08\x08\x08no", "yes\\x08\\x08\\x08no"),
    "one-byte CSI (C1)": ("\x9b2J", "\\x9b2J"),
    "DEL and NUL": ("a\x7fb\x00", "a\\x7fb\\x00"),
    "bidi override": ("abc\u202edcb\u202c", "abc\\u202edcb\\u202c"),
    "bidi isolate": ("\u2066x\u2069", "\\u2066x\\u2069"),
    "lone surrogate": ("bad \udcff byte", "bad \\udcff byte"),
}


@pytest.mark.parametrize("raw, shown", ATTACKS.values(), ids=ATTACKS.keys())
def test_each_attack_is_shown_as_its_escape(raw, shown):
    assert printable(raw) == shown


def test_text_is_kept_as_it_is():
    text = "Line one\n\tindented: naïve café, 日本語, emoji 👩\u200d💻, Hebrew שלום, C:\\path\\x1b literal, [bold]x[/]"
    assert printable(text) == text


def test_every_escaped_character_and_only_those():
    for cp in range(0x10000):  # the whole BMP, surrogates included
        c = chr(cp)
        assert (printable(c) != c) == bool(RAW.match(c)), hex(cp)


@given(st.text())
def test_output_never_holds_a_raw_control_and_pieces_compose(text):
    assert not RAW.search(printable(text))
    cut = len(text) // 2
    assert printable(text[:cut]) + printable(text[cut:]) == printable(text)  # a streamed reply reads as the whole


def test_stream_writes_the_escaped_piece(monkeypatch):
    """`ask` streams a reply token by token through `output.stream`: a model that emits ESC prints `\\x1b`."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    for piece in ["Sure", "\x1b]0;", "pwned\x07", "\r", "done"]:
        output.stream(piece)
    assert out.getvalue() == "Sure\\x1b]0;pwned\\x07\\x0ddone"


def _writes_to_the_terminal(node: ast.AST) -> bool:
    """print(...), echo(...), click.echo/secho(...), traceback.print_*(...), sys.stdout/stderr.write(...)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in ("print", "echo", "secho")
    if isinstance(f, ast.Attribute):
        owner = ast.unparse(f.value)
        return (
            owner == "click"
            and f.attr in ("echo", "secho")
            or owner == "traceback"
            and f.attr.startswith("print")
            or owner in ("sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__")
        )
    return False


def test_the_cli_prints_only_through_output():
    """The choke point holds: no CLI module but `output` writes to the terminal by itself."""
    cli_dir = Path(appliance.cli.__file__).parent
    found = [
        f"{path.name}:{node.lineno}: {ast.unparse(node)[:60]}"
        for path in sorted(cli_dir.glob("*.py"))
        if path.name != "output.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if _writes_to_the_terminal(node)
    ]
    assert not found, found
