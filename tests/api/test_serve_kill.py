"""The kill-switch on `appliance serve`: a reply stops mid-stream with an error event, the server exits locked (4),
the socket is gone, and the journal ends with the kill, as for `ask` and the chat."""

import signal
import subprocess
import sys

import openai
import pytest
from helpers import PASSPHRASE
from serving import MODEL, prepared_home, start

from appliance.api import socket_path
from appliance.journal import read_session, sessions, verify_session
from appliance.vault import Vault

LONG = "Write a very long, detailed story about a lighthouse keeper, chapter by chapter."
SHORT = "What is an air gap?"


@pytest.mark.parametrize("kill", [["kill"], ["kill", "--wipe"]], ids=["kill", "wipe"])
def test_a_kill_ends_the_stream_with_an_error_event_and_removes_the_socket(tmp_path, kill):
    served = start(*prepared_home(tmp_path))
    client = served.client()
    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SHORT}], max_tokens=16, temperature=0
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=2000, stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    assert served.appliance(*kill).returncode == 0
    with pytest.raises(openai.APIError) as ended:
        for _ in chunks:
            pass
    assert ended.value.code == "killed"
    code, err = served.stop(kill=False)
    assert code == 4 and err.strip().splitlines()[-1].endswith("[killed]"), err
    assert not served.socket.exists()  # locked: no socket

    vault = Vault.unlock(served.home, PASSPHRASE.encode())
    sid = first.model_extra["session"]
    assert verify_session(vault, sid).ok
    user, reply, killed = read_session(vault, sid)
    assert (user["text"], reply["finish"], killed["kind"], killed["wipe"]) == (
        LONG,
        "cancelled",
        "kill",
        kill == ["kill", "--wipe"],
    )
    assert whole.model_extra["session"] in sessions(vault)
    vault.zeroize()

    # The same decode loop and sampler as `ask`: the same prompt and settings give the same words.
    r = served.appliance("ask", SHORT, "--max-tokens", "16", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == whole.choices[0].message.content.strip()


def test_a_locked_appliance_has_no_socket(tmp_path):
    home, env = prepared_home(tmp_path)
    env.pop("APPLIANCE_PASSPHRASE_FILE")
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "serve"], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 4 and r.stderr.strip().endswith("[no-passphrase]"), r.stderr
    assert not socket_path(home).exists()


def test_ctrl_c_stops_serving_and_removes_the_socket(tmp_path):
    home, env = prepared_home(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's ctrl-c, even under a shell that ignores it
    )  # fmt: skip
    assert proc.stdout.readline().startswith("serving ")
    assert socket_path(home).exists()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (0, "stopped\n", "")
    assert not socket_path(home).exists()
