"""The one unlocked-appliance lifecycle (`appliance/service.py`) that `ask` and the chat share."""

import json

import pytest
from helpers import PASSPHRASE, appliance, ok, tree_digest

from appliance.errors import ContextOverflow, NotFound, Refused
from appliance.journal import read_session, sessions
from appliance.overlay.files import Overlay
from appliance.runtime.sampler import GREEDY
from appliance.service import UnlockedAppliance
from appliance.vault import Vault
from appliance.vault.killswitch import Killed


def test_ask_journals_a_reply_as_the_chat_does(vault_home, tmp_path):
    ok("ask", "Name a colour.", "--temperature", "0", "--max-tokens", "4")
    (sid,) = [line.split()[0] for line in ok("logs", "list").splitlines()]
    ok("logs", "export", sid, "--format", "jsonl", "--out", str(tmp_path / "s.jsonl"))
    user, assistant = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    for field in ("base", "overlay", "settings", "system_prompt", "divergence"):
        assert assistant[field] == user[field]
    assert assistant["tokens"] == 4 and assistant["finish"] == "length" and assistant["tokens_per_second"] > 0


def test_a_prompt_that_cannot_fit_journals_nothing(vault_home):
    before = tree_digest(vault_home)
    r = appliance("ask", "word " * 5000, "--max-tokens", "4")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "tokens" in r.stderr, r.stderr
    assert tree_digest(vault_home) == before  # no journal session, no key slot, no pid file


def test_the_vault_is_zeroed_however_the_body_ends(vault_home, model):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with pytest.raises(Refused):
        with UnlockedAppliance.open(vault, model) as app:
            app.load(Overlay.KIND, lambda v: (_ for _ in ()).throw(Refused("overlay refused")))
    assert not any(vault._kek)
    assert app.items == {} and app.journal is None
    assert sessions(Vault.unlock(vault_home, PASSPHRASE.encode())) == []  # refused before any record: no session


def test_a_kill_is_handled_once_and_journalled(vault_home, model, runtime):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with pytest.raises(Killed) as killed:
        with UnlockedAppliance.open(vault, model) as app:
            session = app.session(runtime, settings=GREEDY, system_prompt=None)
            app.reply(session, "Hello", max_tokens=2)
            app.cancel.set()  # what the signal handler does
    assert killed.value.wiped == [] and not any(vault._kek)
    (sid,) = sessions(Vault.unlock(vault_home, PASSPHRASE.encode()))
    kinds = [r["kind"] for r in read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)]
    assert kinds == ["message", "message", "kill"]


def test_a_kill_from_the_chat_key_is_not_raised_again(vault_home, model):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with UnlockedAppliance.open(vault, model) as app:
        app.new_journal()
        app.kill()
        assert app.kill() == []  # a second kill (the signal after the key) does nothing more
    (sid,) = sessions(Vault.unlock(vault_home, PASSPHRASE.encode()))
    assert [r["kind"] for r in read_session(Vault.unlock(vault_home, PASSPHRASE.encode()), sid)] == ["kill"]


def test_context_overflow_leaves_the_history_as_it_was(vault_home, model, runtime):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with UnlockedAppliance.open(vault, model) as app:
        session = app.session(runtime, settings=GREEDY, system_prompt=None)
        with pytest.raises(ContextOverflow):
            app.reply(session, "word " * 5000, max_tokens=4)
        assert session.history == [] and app.journal is None


def test_erasing_the_overlay_with_none_loaded_is_not_found(vault_home, model):
    vault = Vault.unlock(vault_home, PASSPHRASE.encode())
    with UnlockedAppliance.open(vault, model) as app:
        with pytest.raises(NotFound):
            app.erase(Overlay.KIND)
