"""Journal text reaches the terminal escaped: `logs list`, `logs show`, both exports, `ask`, error lines.

A prompt (or a model's reply) is text from outside: what it holds must be shown, never obeyed.
"""

import json
import re
from types import SimpleNamespace

import pytest
from helpers import appliance, error_line, tree_digest

from appliance.journal import Journal, provenance
from appliance.runtime.engine_settings import EngineSettings

# A terminal must never receive these from outside text (newline and tab are text).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
EVIL = "title \x1b]0;pwned\x07 clip \x1b]52;c;cm0gLXJmIH4=\x07 clear \x1b[2J cr\rback\x08\x08 end"
SHOWN = "title \\x1b]0;pwned\\x07 clip \\x1b]52;c;cm0gLXJmIH4=\\x07 clear \\x1b[2J cr\\x0dback\\x08\\x08 end"
EVIL_SIGNER = "AB\x1b]0;signer\x07CD"


def _evil_session(vault) -> str:
    j = Journal.create(vault)
    overlay = provenance.item("care", 1, "ab" * 32, [EVIL_SIGNER], True)
    prov = dict(base=provenance.base("base", "cd" * 32, 1), overlay=overlay, settings={"temperature": 0}, system_prompt=EVIL)
    j.append("message", **provenance.message("user", EVIL, **prov))
    j.append("message", **provenance.message("assistant", "reply:\n" + EVIL, **prov))
    j.close()
    return j.session_id


def _shown_not_obeyed(text: str) -> None:
    assert not RAW.search(text), repr(RAW.search(text).group())
    assert SHOWN in text


def test_logs_show_and_list_escape_the_journal(vault_home, vault):
    sid = _evil_session(vault)
    r = appliance("logs", "show", sid)
    assert r.returncode == 0, r.stderr
    _shown_not_obeyed(r.stdout)
    assert "signers AB\\x1b]0;signer\\x07CD" in r.stdout  # provenance from the store is outside text too
    assert "    assistant: reply:\n" in r.stdout  # newlines stay newlines

    r = appliance("logs", "list")  # OSC sequences survived here even when piped
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stdout) and f"{sid}  " in r.stdout and "title \\x1b]0;pwned\\x07" in r.stdout


def test_markdown_export_is_escaped_and_jsonl_is_json_escaped(vault_home, vault, tmp_path):
    sid = _evil_session(vault)
    md, jsonl = tmp_path / "s.md", tmp_path / "s.jsonl"
    assert appliance("logs", "export", sid, "--format", "md", "--out", str(md)).returncode == 0
    text = md.read_text()  # someone will `cat` this file
    _shown_not_obeyed(text)
    assert "\nreply:\n" + SHOWN in text

    assert appliance("logs", "export", sid, "--format", "jsonl", "--out", str(jsonl)).returncode == 0
    raw = jsonl.read_text()
    assert not RAW.search(raw) and raw.isascii()  # json.dumps escapes every control character
    assert [json.loads(line)["text"] for line in raw.splitlines()] == [EVIL, "reply:\n" + EVIL]  # and loses nothing


def test_error_line_quoting_outside_text_is_escaped(vault_home, tmp_path):
    """An error names what it could not use; a file name is outside text like any other."""
    missing = tmp_path / "pass\x1b]0;pwned\x07\x1b[2J"
    r = appliance("logs", "list", "--passphrase-file", str(missing))
    line = error_line(r, 4, "no-passphrase")
    assert not RAW.search(r.stderr) and "pass\\x1b]0;pwned\\x07\\x1b[2J" in line


@pytest.mark.parametrize("prompt", ["", "   ", " \n\t "])
def test_ask_refuses_an_empty_prompt(vault_home, prompt):
    before = tree_digest(vault_home)
    r = appliance("ask", prompt, "--max-tokens", "1")
    assert "prompt is empty" in error_line(r, 2, "usage")
    assert r.stdout == "" and tree_digest(vault_home) == before  # no session journaled


PIECES = ["Sure", "\x1b]0;", "pwned\x07", "\x1b[2J", "\r", "\x08", " done"]


class _ModelThatEmitsControls:
    """Stands in for `Session`: a reply whose tokens carry ESC, CR and BS, streamed piece by piece."""

    def __init__(self, runtime, **kw):
        self.runtime = runtime  # the device its messages name
        self.system_prompt = kw.get("system_prompt")
        self.on: set[str] = set()  # nothing loaded: `ask` without --overlay or --control

    def conditioning(self) -> dict:
        return {"settings": {"temperature": 0}, "system_prompt": self.system_prompt}

    def generate(self, prompt, *, max_tokens, on_text, cancel, on_start):
        on_start()
        for piece in PIECES:
            on_text(piece)
        return SimpleNamespace(text="".join(PIECES), finish="stop", tokens=PIECES, dropped_turns=0, tokens_per_second=1.0)


def test_ask_streams_a_reply_escaped(vault_home, monkeypatch, capsys):
    """The real `ask` command, with a model whose reply carries control characters: shown, not obeyed."""
    from appliance import service
    from appliance.cli import commands
    from appliance.cli.main import main

    on_cpu = SimpleNamespace(settings=EngineSettings(), engine=SimpleNamespace(n_layer=30), close=lambda: None)
    monkeypatch.setattr(commands, "Runtime", lambda model, settings: on_cpu)
    monkeypatch.setattr(service, "Session", _ModelThatEmitsControls)
    # In process, so not the process protections: their hard core limit of 0 cannot be raised again,
    # and later tests start children that must be able to dump core (test_process_protections.py).
    monkeypatch.setattr("appliance.cli.main.harden_process", lambda: None)
    with pytest.raises(SystemExit) as done:
        main(["ask", "say \x1b]0;hi\x07"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    assert out.out == "Sure\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x08 done\n"
    (sid,) = [line.split()[0] for line in appliance("logs", "list").stdout.splitlines()]
    r = appliance("logs", "show", sid)  # journaled as the model wrote it, shown escaped
    assert (
        not RAW.search(r.stdout) and "assistant: Sure\\x1b]0;pwned\\x07" in r.stdout and "user: say \\x1b]0;hi\\x07" in r.stdout
    )
