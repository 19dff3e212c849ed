"""Resume from F4, prompt presets on F6, the external editor (ctrl+e), a multi-line paste, copying one code block
(ctrl+g): on the real model where the reply matters."""

import os
import stat

from helpers import PASSPHRASE
from textual import events
from textual.widgets import DataTable, OptionList
from ui_support import open_sessions, send, unlock, wait_for

from appliance import presets
from appliance.editor_scratch import EDITOR_DIR
from appliance.journal import read_session
from appliance.runtime.sampler import GREEDY
from appliance.runtime.session import Session
from appliance.ui.chat import ChatScreen
from appliance.ui.modals import PresetScreen
from appliance.ui.widgets import ChatMessage, PromptInput, StatusBar
from appliance.vault import Vault


def _records(home, session_id):
    with Vault.unlock(home, PASSPHRASE.encode()) as vault:
        return read_session(vault, session_id)


async def test_resume_from_the_sessions_screen_continues_in_a_new_linked_session(vault_home, make_app, reference_runtime):
    app = make_app(overlay=False, max_tokens=16)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        app.core.set_system_prompt("You are terse.")
        await send(pilot, "My name is Ada.")
        old = app.core.status().session_id
        first_exchange = list(app.core.session.history)
        await pilot.press("f5")  # a new, empty session: the old one is only in the journal now
        await pilot.pause()
        assert app.core.session.history == [] and app.core.session.system_prompt is None
        screen = await open_sessions(pilot)
        table = screen.query_one(DataTable)
        table.move_cursor(row=[str(table.get_row_at(n)[0]) for n in range(table.row_count)].index(old))
        await pilot.press("r")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_for(pilot, lambda: len(chat.query(ChatMessage)) == 2, what="the resumed history")
        assert [(v.role, v.header.render().plain) for v in chat.query(ChatMessage)] == [
            ("user", "you"), ("assistant", "assistant  (resumed)")]  # fmt: skip
        assert app.core.session.history == first_exchange and app.core.session.system_prompt == "You are terse."
        new = app.core.status().session_id
        assert new != old and new in chat.query_one(StatusBar).render().plain
        assert any(f"resumed {old}: 2 messages" in n.message for n in app._notifications)
        await send(pilot, "What is my name?")
        reply = app.core.session.history[-1]["content"]
    link, user, assistant = _records(vault_home, new)
    assert link["kind"] == "resume" and link["from_session"] == old and link["from_head_seq"] == 2
    assert user["text"] == "What is my name?" and assistant["text"] == reply
    assert assistant["system_prompt"] == "You are terse."
    assert len(_records(vault_home, old)) == 2  # the old session is as it was
    reference_runtime.decoder.reset()
    fresh = Session(reference_runtime, system_prompt="You are terse.", settings=GREEDY, history=list(first_exchange))
    assert fresh.generate("What is my name?", max_tokens=16).text == reply


async def test_resume_at_unlock_and_a_session_that_cannot_be_resumed(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=4)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await send(pilot, "Hello.")
        old = app.core.status().session_id
        await app.screen.resume_session("20250101T000000Z-00000000")  # not in the journal: the chat goes on as it was
        await pilot.pause()
        assert app.core.status().session_id == old and len(app.core.session.history) == 2
        assert any("cannot resume 20250101T000000Z-00000000" in n.message for n in app._notifications)
    app.core.lock()  # one unlocked appliance per state dir at a time
    resumed = make_app(overlay=True, max_tokens=4)
    resumed.core.resume_at_unlock = old  # what `appliance chat --resume ID` passes
    async with resumed.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        chat = resumed.screen
        await wait_for(pilot, lambda: len(chat.query(ChatMessage)) == 2, what="the resumed history")
        assert resumed.core.session.history[0]["content"] == "Hello."
        assert not resumed.core.session.on  # recorded OFF (no overlay then): resumed as it was
        assert any(f"resumed {old}" == n.message for n in resumed._notifications)


async def test_presets_picked_on_f6_condition_the_reply_and_are_journalled(vault_home, make_app, reference_runtime):
    with Vault.unlock(vault_home, PASSPHRASE.encode()) as vault:
        presets.add(vault, "pirate", "You are a pirate. Answer like one.")
        presets.add(vault, "terse", "Answer in one word.")
    app = make_app(overlay=False, max_tokens=12)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("f6")
        picker = app.screen
        assert isinstance(picker, PresetScreen)
        options = picker.query_one(OptionList)
        assert [str(options.get_option_at_index(n).prompt) for n in range(options.option_count)] == [
            "the model's default (no system prompt)",
            "write one for this session...",
            "preset pirate: You are a pirate. Answer like one.",
            "preset terse: Answer in one word.",
        ]
        options.highlighted = 2
        await pilot.press("enter")
        await pilot.pause()
        assert app.core.session.system_prompt == "You are a pirate. Answer like one." and app.core.session.preset == "pirate"
        await send(pilot, "Where is the treasure?")
        reply = app.core.session.history[-1]["content"]
        await pilot.press("f6")
        app.screen.query_one(OptionList).highlighted = 0  # back to the model's default
        await pilot.press("enter")
        await pilot.pause()
        assert app.core.session.system_prompt is None and app.core.session.preset is None
        sid = app.core.status().session_id
    user, assistant = _records(vault_home, sid)
    assert user["preset"] == assistant["preset"] == "pirate"
    assert assistant["system_prompt"] == "You are a pirate. Answer like one."
    reference_runtime.decoder.reset()
    fresh = Session(reference_runtime, system_prompt="You are a pirate. Answer like one.", settings=GREEDY)
    assert fresh.generate("Where is the treasure?", max_tokens=12).text == reply


def _editor(tmp_path, body: str):
    """An $EDITOR that notes the file it was given (path, mode, its folder's mode), then runs `body`."""
    script, log = tmp_path / "editor.sh", tmp_path / "editor.log"
    script.write_text(f'#!/bin/sh\nstat -c "%a" "$1" "$(dirname "$1")" > {log}\necho "$1" >> {log}\ncat "$1" >> {log}\n{body}\n')
    script.chmod(0o700)
    return script, log


async def test_ctrl_e_edits_the_prompt_in_a_0600_file_wiped_after(vault_home, make_app, tmp_path, monkeypatch):
    script, log = _editor(tmp_path, "printf 'line one\\nline two\\n' > \"$1\"")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(script))
    app = make_app(overlay=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        prompt = app.screen.query_one(PromptInput)
        prompt.text = "draft"
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: prompt.text != "draft", what="the editor")
        assert prompt.text == "line one\nline two"  # the final newline the editor wrote is dropped
        file_mode, dir_mode, path, before = log.read_text().splitlines()
        assert (file_mode, dir_mode, before) == ("600", "700", "draft")
        assert os.path.dirname(os.path.dirname(path)) == str(vault_home / EDITOR_DIR)
        assert not os.path.exists(os.path.dirname(path)) and os.listdir(vault_home / EDITOR_DIR) == []
        assert stat.S_IMODE(os.stat(vault_home / EDITOR_DIR).st_mode) == 0o700
        # An editor that fails leaves the prompt as it was, and wipes all the same.
        script.write_text(f'#!/bin/sh\necho "$1" > {log}\necho junk > "$1"\nexit 3\n')
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: any("exited with status 3" in n.message for n in app._notifications), what="the error")
        assert prompt.text == "line one\nline two" and os.listdir(vault_home / EDITOR_DIR) == []


async def test_a_multi_line_paste_is_one_message(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=4)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        prompt = app.screen.query_one(PromptInput)
        app.post_message(events.Paste("first line\nsecond line\n\nfourth line"))  # as the driver reads a bracketed paste
        await pilot.pause()
        assert prompt.text == "first line\nsecond line\n\nfourth line"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.screen.replies.busy and len(app.core.session.history) == 2, what="the reply")
        assert app.core.session.history[0]["content"] == "first line\nsecond line\n\nfourth line"


REPLY_WITH_CODE = """Two ways:

```sh
ls -la
```

or, in Python:

```python
import os
print(os.listdir("."))
```

Done."""


async def test_ctrl_g_copies_one_code_block_at_a_time(vault_home, make_app):
    app = make_app(overlay=False, max_tokens=4)
    async with app.run_test(size=(100, 30)) as pilot:
        await unlock(pilot, PASSPHRASE)
        await pilot.press("ctrl+g")
        assert any("no code block" in n.message for n in app._notifications)
        await send(pilot, "Hello.")
        app.core.session.history[-1]["content"] = REPLY_WITH_CODE
        copied = []
        for _ in range(3):
            await pilot.press("ctrl+g")
            copied.append(app.clipboard)
        assert copied == ['import os\nprint(os.listdir("."))', "ls -la", 'import os\nprint(os.listdir("."))']
        assert any("copied code block 1 of 2" in n.message for n in app._notifications)
        app.core.session.history[-1]["content"] = "```\nrm -rf ~\x1b[201~\n```"  # escaped as shown, as ctrl+o does
        await pilot.press("ctrl+g")
        assert app.clipboard == "rm -rf ~\\x1b[201~"
