"""`appliance serve` end to end: the real embedded model, a real vault and journal, the server inside `unshare -n`,
and clients no one here wrote (the official `openai` package, curl)."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest
from helpers import tree_digest
from serving import MODEL, chat_body, prepared_home, start

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home, env = prepared_home(tmp_path_factory.mktemp("serve"))
    server = start(home, env)
    yield server
    server.stop()


def _messages(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["role"], r["text"]) for r in records if r["kind"] == "message"]


def test_the_socket_is_the_owners_alone(served):
    assert served.socket.stat().st_mode & 0o777 == 0o600
    assert served.socket.parent.stat().st_mode & 0o777 == 0o700
    assert "--tcp" not in served.appliance("serve", "--help").stdout


def test_models_and_health(served):
    assert [m.id for m in served.client().models.list()] == [MODEL]
    status, text = served.curl("http://appliance/health")
    assert status == 200 and json.loads(text) == {"status": "ok", "model": MODEL, "queue": 0}


def test_the_official_client_gets_a_reply_that_is_journalled_with_its_client(served):
    before = set(served.journal())
    completion = served.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is an air gap?"}], max_tokens=24, temperature=0
    )
    text = completion.choices[0].message.content
    assert text and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    sid = completion.model_extra["session"]
    assert set(served.journal()) - before == {sid}
    user, reply = served.journal()[sid]
    assert _messages([user, reply]) == [("user", "What is an air gap?"), ("assistant", text)]
    for record in (user, reply):  # provenance as `ask` writes it, and the program that asked
        assert record["base"]["name"] == MODEL and record["settings"]["temperature"] == 0
        assert record["client"] == {"pid": record["client"]["pid"], "exe": os.path.realpath(sys.executable)}
    assert record["client"]["pid"] == os.getpid()


def test_logs_name_the_client_of_an_api_session(tmp_path):
    # A server of its own: `logs` needs the vault, which the running server holds (one appliance at a time).
    home, env = prepared_home(tmp_path)
    server = start(home, env)
    try:
        completion = server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
    finally:
        server.stop()
    sid = completion.model_extra["session"]
    listed = server.appliance("logs", "list").stdout
    assert f"[client {os.path.realpath(sys.executable)} (pid {os.getpid()})]" in next(
        line for line in listed.splitlines() if sid in line
    )
    assert f"client {os.path.realpath(sys.executable)}" in server.appliance("logs", "show", sid).stdout


def test_a_streamed_reply_arrives_in_pieces_and_equals_the_journal(served):
    stream = served.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    sid = chunks[0].model_extra["session"]
    assert _messages(served.journal()[sid])[-1] == ("assistant", "".join(pieces))


def test_curl_streams_server_sent_events(served):
    status, text = served.curl("-N", "http://appliance/v1/chat/completions", "-d", chat_body("Hi", max_tokens=8, stream=True))
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"


def test_a_session_continues_by_the_id_it_returned(served):
    client = served.client()
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "My name is Ada."}],
        max_tokens=16, temperature=0,
    )  # fmt: skip
    old = first.model_extra["session"]
    second = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is my name?"}], max_tokens=16, temperature=0,
        extra_body={"session": old},
    )  # fmt: skip
    new = second.model_extra["session"]
    records = served.journal()[new]
    assert new != old and records[0]["kind"] == "resume" and records[0]["from_session"] == old
    assert records[1]["system_prompt"] == "You are terse." and records[1]["text"] == "What is my name?"


def test_requests_are_decoded_one_at_a_time_and_the_queue_shows_it(served):
    client, http = served.client(), served.http()
    long = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell a long story about a lighthouse."}], max_tokens=400,
        temperature=0.7, stream=True,
    )  # fmt: skip
    first = next(iter(long))  # decoding now
    second: list = []
    waiting = threading.Thread(
        target=lambda: second.append(http.post("/v1/chat/completions", content=chat_body("Hi", max_tokens=8)))
    )
    waiting.start()
    deadline = time.monotonic() + 60
    while http.get("/health").json()["queue"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http.get("/health").json()["queue"] == 2
    rest = list(long)
    waiting.join(timeout=120)
    assert rest[-1].choices[0].finish_reason in ("stop", "length") and second[0].status_code == 200
    journal = served.journal()
    long_reply = journal[first.model_extra["session"]][-1]
    short_user = journal[second[0].json()["session"]][0]
    assert short_user["time"] > long_reply["time"]  # the second decode began after the first had ended


def test_a_client_that_goes_away_mid_stream_stops_its_decode(served):
    http = served.http()
    stream = served.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a very long story about a lighthouse, chapter by chapter."}],
        max_tokens=2000, stream=True,
    )  # fmt: skip
    first = next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 60
    while http.get("/health").json()["queue"] and time.monotonic() < deadline:
        time.sleep(0.05)
    _user, reply = served.journal()[first.model_extra["session"]]
    assert reply["finish"] == "cancelled" and reply["tokens"] < 2000


@pytest.mark.parametrize(
    "args, status, code",
    [
        (["-d", "{not json"], 400, "request-not-json"),
        (["-d", chat_body("Hi", model="gpt-4o")], 404, "unknown-model"),
        (["-d", chat_body("Hi", max_tokens="many")], 400, "request-invalid"),
        (["--data-binary", b'{"model": "x", "messages": [{"role": "user", "content": "\xff"}]}'], 400, "request-not-utf8"),
        (["-d", chat_body("word " * 6000)], 400, "context-overflow"),
        (["-d", chat_body("Hi", overlay="on")], 404, "no-overlay"),
        (["-d", chat_body("Hi", session="20260101T000000Z-00000000")], 404, "not-found"),
    ],
    ids=["malformed-json", "unknown-model", "wrong-type", "invalid-utf8", "beyond-the-window", "no-overlay", "unknown-session"],
)
def test_a_bad_request_gets_the_error_object_and_journals_nothing(served, args, status, code):
    before = tree_digest(served.home)
    if isinstance(args[-1], bytes):  # curl takes the raw bytes from a file
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            f.write(args[-1])
            f.flush()
            got, text = served.curl("http://appliance/v1/chat/completions", args[0], f"@{f.name}")
    else:
        got, text = served.curl("http://appliance/v1/chat/completions", *args)
    assert got == status and json.loads(text)["error"]["code"] == code, text
    assert tree_digest(served.home) == before


def test_a_body_over_the_cap_is_refused_before_it_is_read(served):
    before = tree_digest(served.home)
    with tempfile.NamedTemporaryFile() as f:
        f.write(chat_body("x" * 10_000_000).encode())
        f.flush()
        status, text = served.curl("http://appliance/v1/chat/completions", "--data-binary", f"@{f.name}")
    assert status == 413 and json.loads(text)["error"]["code"] == "request-too-large"
    assert tree_digest(served.home) == before


def test_the_official_client_raises_the_error_object(served):
    with pytest.raises(openai.NotFoundError) as refused:
        served.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.code == "unknown-model"


def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """Python `code` in a child that has become the unprivileged user `nobody` before it runs (the system's
    Python: nobody may not read the test's virtual environment)."""

    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=drop, cwd="/", env={}
    )


CONNECT = (  # prints `connect ERRNO` when refused at connect, else `reply N`: the bytes of the reply (0: closed)
    "import socket\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect({path!r})\n"
    "except OSError as e:\n"
    "    print('connect', e.errno); raise SystemExit\n"
    "s.settimeout(30)\n"
    "try:\n"
    "    s.sendall(b'GET /health HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n')\n"
    "    print('reply', len(s.recv(4096)))\n"
    "except (BrokenPipeError, ConnectionResetError):\n"
    "    print('reply', 0)\n"
)


def test_another_user_cannot_reach_the_socket(served):
    if os.geteuid() != 0:
        pytest.skip("becoming another user needs root")
    before = tree_digest(served.home)
    r = _as_nobody(CONNECT.format(path=str(served.socket)))
    assert r.stdout.split() == ["connect", "13"], r  # EACCES: the 0700 directory
    assert tree_digest(served.home) == before


def test_another_user_that_reaches_the_socket_is_refused_by_its_uid(served):
    """The second wall: the socket reached another way (here a hard link in an open directory, its mode
    opened): the server checks SO_PEERCRED, closes without a byte, and journals nothing."""
    if os.geteuid() != 0:
        pytest.skip("becoming another user needs root")
    before = tree_digest(served.home)
    open_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    link = open_dir / "reach.sock"
    try:
        open_dir.chmod(0o755)
        os.link(served.socket, link)
        link.chmod(0o666)
        r = _as_nobody(CONNECT.format(path=str(link)))
    finally:
        served.socket.chmod(0o600)
        link.unlink(missing_ok=True)
        open_dir.rmdir()
    assert r.stdout.split() == ["reply", "0"], r  # connected, then closed without a reply
    assert tree_digest(served.home) == before
    status, _ = served.curl("http://appliance/health")  # the owner is still served
    assert status == 200


def test_the_server_holds_no_network_socket(served):
    """Every socket the server process has open is a Unix socket, and its network namespace has no TCP or UDP socket.

    The Unix sockets are read before and after the descriptors (a connection the server closes meanwhile is in
    one), in both namespaces: a connection accepted from a client (this test's) belongs to the client's namespace."""
    proc = Path(f"/proc/{served.proc.pid}")  # `unshare -n` execs the appliance: the same process
    unix = _unix_socket_inodes(proc)
    sockets = set()
    for fd in (proc / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while listed
            continue
        if target.startswith("socket:["):
            sockets.add(target.removeprefix("socket:[").removesuffix("]"))
    unix |= _unix_socket_inodes(proc)
    assert sockets and sockets <= unix, sockets - unix
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        assert (proc / "net" / table).read_text().splitlines()[1:] == [], table


def _unix_socket_inodes(proc: Path) -> set[str]:
    tables = [proc / "net" / "unix", Path("/proc/self/net/unix")]
    return {line.split()[6] for table in tables for line in table.read_text().splitlines()[1:]}
