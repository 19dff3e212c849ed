"""The real `appliance chat` in a real terminal (tmux), on the demo overlay imported through the trust chain:
unlock, a reply with the overlay ON, help, the overlay key, a reply OFF, the kill key; and a new user's
first `./run chat`, prompt by prompt."""

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PASSPHRASE, appliance, make_vault_home

from appliance.journal import read_session, sessions
from appliance.vault import Vault
from appliance.vault.killswitch import pid_path

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
CHECKOUT = Path(__file__).resolve().parents[2]
# Every passphrase prompt the shell can show: `appliance chat`'s and `init`'s (click's confirmation prompt).
PROMPT = re.compile(r"^(New passphrase|Repeat for confirmation|Passphrase):", re.M)


class Tmux:
    """One private tmux server (its own socket), one 120x40 session running a command."""

    def __init__(self, tmp: Path, command: list[str], env: dict):
        # A server of its own each time: a new session on the socket of one just killed can meet it dying.
        self.socket = f"appliance-test-{os.getpid()}-{secrets.token_hex(4)}"
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.run(
            "new-session", "-d", "-s", "ui", "-x", "120", "-y", "40", f"cd {tmp} && env {exports} {' '.join(command)}; sleep 60"
        )

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "ui", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "ui")

    def history(self) -> str:
        """Everything the shell printed (the UI's alternate screen, once it has closed, leaves none of its own)."""
        return self.run("capture-pane", "-p", "-S", "-", "-t", "ui")

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def demo_home(home, tmp_path):
    """`appliance init --demo` on a home with a vault: the demo overlay signed and imported through the real trust chain."""
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    make_vault_home(home)
    r = appliance("init", "--demo", "--passphrase-file", str(passphrase_file))
    assert r.returncode == 0, r.stderr
    return home


def test_chat_in_tmux_unlock_reply_toggle_kill(demo_home, tmp_path):
    env = {"APPLIANCE_HOME": str(demo_home), "TERM": "xterm-256color", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "appliance", "chat", "--temperature", "0", "--max-tokens", "16", "--threads", "1"]
    tmux = Tmux(tmp_path, command, env)
    try:
        tmux.wait_for("Passphrase:")
        tmux.keys("-l", PASSPHRASE)
        tmux.keys("Enter")
        tmux.wait_for(r"overlay  ON  field-manual-demo v1 signers")  # decrypted and re-verified at unlock
        tmux.keys("-l", "Name three colours.")
        tmux.keys("Enter")
        tmux.wait_for(r"assistant  overlay ON  (control OFF  )?\d+ tok  [\d.]+ tok/s", timeout=120)  # the reply has finished
        assert pid_path(demo_home).exists()
        tmux.keys("F1")  # F-keys and escape reach the app through tmux
        tmux.wait_for("Everywhere", timeout=10)
        tmux.keys("Escape")
        tmux.wait_for("Message \\(enter sends", timeout=10)  # a lone escape is read only after a pause
        tmux.keys("F2")
        tmux.wait_for(r"overlay  OFF  field-manual-demo", timeout=10)
        tmux.keys("-l", "And three animals?")
        tmux.keys("Enter")
        tmux.wait_for(r"assistant  overlay OFF  (control OFF  )?\d+ tok", timeout=120)
        tmux.keys("F9")
        assert "Killed" in tmux.wait_for("Passphrase:", timeout=10)
        assert not pid_path(demo_home).exists()  # `appliance kill` now finds nothing to stop
    finally:
        tmux.close()
    vault = Vault.unlock(demo_home, PASSPHRASE.encode())
    trust_pins, sid = sessions(vault)  # init --demo journalled its two pins in one session
    assert [r["action"] for r in read_session(vault, trust_pins)] == ["pin", "pin"]
    records = read_session(vault, sid)
    assert [r.get("role", r["kind"]) for r in records] == ["user", "assistant", "overlay-toggle", "user", "assistant", "kill"]
    assert records[1]["overlay"]["name"] == "field-manual-demo" and records[1]["overlay"]["on"] is True
    assert records[4]["overlay"]["on"] is False and len(records[1]["overlay"]["signers"]) == 2


def test_chat_resume_and_editor_in_tmux(demo_home, tmp_path):
    """`appliance chat --resume ID` in a real terminal: the old exchange on screen, a prompt written in $EDITOR
    (ctrl+e hands the terminal over and takes it back), a reply that continues the conversation, in a new
    journal session whose first record links the old one."""
    passphrase_file = tmp_path / "passphrase"  # written by demo_home
    r = appliance("ask", "My name is Ada.", "--temperature", "0", "--max-tokens", "8", "--passphrase-file", str(passphrase_file))
    assert r.returncode == 0, r.stderr
    with Vault.unlock(demo_home, PASSPHRASE.encode()) as vault:
        (old,) = [s for s in sessions(vault) if read_session(vault, s)[0]["kind"] == "message"]
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nprintf 'What is my name?\\n' > \"$1\"\n")
    editor.chmod(0o700)
    env = {"APPLIANCE_HOME": str(demo_home), "TERM": "xterm-256color", "PYTHONPATH": str(Path.cwd()), "EDITOR": str(editor)}
    command = [sys.executable, "-m", "appliance", "chat", "--resume", old, "--temperature", "0", "--max-tokens", "12"]
    tmux = Tmux(tmp_path, [*command, "--threads", "1"], env)
    try:
        tmux.wait_for("Passphrase:")
        tmux.keys("-l", PASSPHRASE)
        tmux.keys("Enter")
        screen = tmux.wait_for(r"assistant  \(resumed\)")
        assert "My name is Ada." in screen
        tmux.keys("C-e")
        tmux.wait_for(r"What is my name\?", timeout=10)  # back from the editor: in the prompt box (not in the history)
        tmux.keys("Enter")
        tmux.wait_for(r"assistant  overlay OFF  (control OFF  )?\d+ tok  [\d.]+ tok/s", timeout=120)  # recorded OFF, resumed OFF
        tmux.keys("C-q")  # quit: locked and gone, no `kill` record
        deadline = time.monotonic() + 30
        while pid_path(demo_home).exists():
            assert time.monotonic() < deadline, f"the chat did not quit; the screen:\n{tmux.screen()}"
            time.sleep(0.1)
    finally:
        tmux.close()
    with Vault.unlock(demo_home, PASSPHRASE.encode()) as vault:
        (new,) = [s for s in sessions(vault) if read_session(vault, s)[0]["kind"] == "resume"]
        records = read_session(vault, new)
    assert [r.get("role", r["kind"]) for r in records] == ["resume", "user", "assistant"]
    assert records[0]["from_session"] == old and records[0]["from_head_seq"] == 2
    assert records[1]["text"] == "What is my name?" and records[2]["overlay"]["on"] is False


def _quit_chat(tmux: Tmux) -> str:
    """Quit the chat; what the shell printed, once the UI's screen is gone."""
    tmux.keys("C-q")
    tmux.wait_for(PROMPT.pattern, timeout=30)  # the shell's own screen is back
    return tmux.history()


@pytest.mark.slow
@pytest.mark.skipif(
    Path(sys.prefix).resolve() != CHECKOUT / ".venv", reason="./run runs the checkout's .venv, not the one running the tests"
)
def test_first_run_chat_asks_the_passphrase_twice_then_opens_the_chat(home, tmp_path):
    """A new user's `./run chat` on a fresh state dir: the new passphrase and its confirmation, the demo installed,
    the chat open on the vault just made, no third prompt; the next `./run chat` asks once."""
    env = {"APPLIANCE_HOME": str(home), "TERM": "xterm-256color"}
    command = [str(CHECKOUT / "run"), "chat", "--temperature", "0", "--max-tokens", "8", "--threads", "1"]
    chat_open = r"overlay  ON  field-manual-demo v1 signers"
    tmux = Tmux(tmp_path, command, env)
    try:
        for prompt in ("New passphrase:", "Repeat for confirmation:"):
            tmux.wait_for(f"(?m)^{prompt}", timeout=300)  # a stale .venv is set up first (minutes)
            tmux.keys("-l", PASSPHRASE)
            tmux.keys("Enter")
        # the demo is signed and imported first; an unlock prompt at the shell would be the third
        screen = tmux.wait_for(f"{chat_open}|(?m:^Passphrase:)", timeout=300)
        assert re.search(chat_open, screen), f"a prompt instead of the chat:\n{screen}"
        first = _quit_chat(tmux)
    finally:
        tmux.close()
    assert PROMPT.findall(first) == ["New passphrase", "Repeat for confirmation"], first
    assert "vault:   created" in first and "demo:    installed overlay field-manual-demo v1" in first

    tmux = Tmux(tmp_path, command, env)  # a later run: the passphrase once, at the shell, then the chat
    try:
        tmux.wait_for("(?m)^Passphrase:")
        tmux.keys("-l", PASSPHRASE)
        tmux.keys("Enter")
        screen = tmux.wait_for(f"{chat_open}|(?ms:^Passphrase:.*^Passphrase:)", timeout=120)
        assert re.search(chat_open, screen), f"a prompt instead of the chat:\n{screen}"
        later = _quit_chat(tmux)
    finally:
        tmux.close()
    assert PROMPT.findall(later) == ["Passphrase"], later


def test_bundle_create_shows_a_bar_in_a_terminal(tmp_path):
    """Long work over a large artifact, on a terminal: a bar per pass with bytes, MB/s and time left."""
    artifact = tmp_path / "large.gguf"
    with open(artifact, "wb") as f:
        f.truncate(150_000_000)  # sparse: above the 128 MiB that shows progress, at little disk cost
    env = {"TERM": "xterm-256color", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "appliance", "bundle", "create", "--kind", "base-model", "--name", "large",
               "--version", "1", "--artifact", str(artifact), "--out", str(tmp_path / "large.bundle")]  # fmt: skip
    tmux = Tmux(tmp_path, command, env)
    try:
        screen = tmux.wait_for(r"created .*large\.bundle", timeout=120)
    finally:
        tmux.close()
    bar = r"━+ 150\.0/150\.0 MB [\d.]+ [MG]B/s 0:00:00"
    for pass_ in (r"hash large\.gguf", r"write large\.bundle"):
        assert re.search(rf"^{pass_} {bar}$", screen, re.M), screen
