"""The `api` section of the bench: `appliance serve` against `ask` on the same prompt.

Tokens/s as a client sees them, from the first streamed piece to the last, over the tokens the
journal counted: through the API's server-sent events with the official `openai` client, and on
`ask`'s stdout. Each is the real command on a state directory of its own (one running appliance per
directory), greedy, interleaved round by round. The overhead per request: a whole (not streamed)
reply's time at the client, less the time the same reply takes in process (`UnlockedAppliance.reply`,
its journal included), so what is left is HTTP, parsing, the queue and the worker hand-over.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

PASSPHRASE = b"bench api passphrase"


def _home(root: Path) -> tuple[Path, dict]:
    from appliance import state
    from appliance.vault import Vault

    home, passphrase = root / "home", root / "passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    state.initialise(home)
    Vault.create(home, PASSPHRASE).zeroize()
    return home, {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(passphrase)}


def _tokens(home: Path, session_id: str | None = None) -> int:
    """The tokens of the last reply journalled in `session_id` (else in the newest session)."""
    from appliance.journal import read_session, sessions
    from appliance.vault import Vault

    with Vault.unlock(home, PASSPHRASE) as vault:
        records = read_session(vault, session_id or sorted(sessions(vault))[-1])
    return next(r["tokens"] for r in reversed(records) if r.get("role") == "assistant")


def _rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def _ask_rate(home: Path, env: dict, prompt: str, n_tokens: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "ask", prompt, "--max-tokens", str(n_tokens), "--temperature", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    first = last = 0.0
    while os.read(proc.stdout.fileno(), 4096):  # type: ignore[union-attr]
        last = time.perf_counter()
        first = first or last
    if proc.wait() != 0:
        raise RuntimeError("ask failed")
    return _rate(_tokens(home), first, last)


def _api_rate(client, home: Path, model: str, prompt: str, n_tokens: int) -> float:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=n_tokens, temperature=0, stream=True
    )
    first = last = 0.0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            session = chunk.model_extra["session"]
    return _rate(_tokens(home, session), first, last)


@contextmanager
def _in_process(model, prompt: str, n_tokens: int, root: Path) -> Iterator[Callable[[], float]]:
    """The same reply with no server, timed: the lifecycle `ask` runs, in this process, warmed up as the server is."""
    from appliance.runtime.sampler import SamplingSettings
    from appliance.runtime.session import Runtime
    from appliance.service import UnlockedAppliance
    from appliance.vault import Vault

    home, _env = _home(root)
    runtime = Runtime(model)
    try:
        with UnlockedAppliance.open(Vault.unlock(home, PASSPHRASE), model) as app:

            def reply() -> float:
                app.close_journal()  # a session per reply, as each `ask` and each API request has
                session = app.session(runtime, settings=SamplingSettings(temperature=0), system_prompt=None)
                t = time.perf_counter()
                app.reply(session, prompt, max_tokens=n_tokens)
                return time.perf_counter() - t

            reply()
            yield reply
    finally:
        runtime.close()


def api_rows(model, prompt: str, rounds: int, n_tokens: int) -> list[tuple]:
    import httpx2
    import openai

    from appliance.api import socket_path

    with tempfile.TemporaryDirectory(prefix="api", dir="/tmp") as tmp, ExitStack() as stack:  # short: a socket path is limited
        root = Path(tmp)
        (root / "serve").mkdir()
        (root / "ask").mkdir()
        serve_home, serve_env = _home(root / "serve")
        ask_home, ask_env = _home(root / "ask")
        server = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve"],
            env=serve_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            if not server.stdout.readline().startswith("serving "):  # type: ignore[union-attr]
                raise RuntimeError("appliance serve did not start")
            transport = httpx2.HTTPTransport(uds=str(socket_path(serve_home)))
            client = openai.OpenAI(
                api_key="local", base_url="http://appliance/v1", http_client=httpx2.Client(transport=transport)
            )
            name = client.models.list().data[0].id
            api, ask, whole, alone = [], [], [], []
            (root / "alone").mkdir()
            in_process = stack.enter_context(_in_process(model, prompt, n_tokens, root / "alone"))
            for _ in range(rounds):
                api.append(_api_rate(client, serve_home, name, prompt, n_tokens))
                ask.append(_ask_rate(ask_home, ask_env, prompt, n_tokens))
                t = time.perf_counter()
                client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": prompt}], max_tokens=n_tokens, temperature=0
                )
                whole.append(time.perf_counter() - t)
                alone.append(in_process())
        finally:
            server.terminate()  # the kill signal: the server stops, zeroes its keys and exits
            server.wait(timeout=60)
    api_rate, ask_rate = statistics.median(api), statistics.median(ask)
    overhead_ms = (statistics.median(whole) - statistics.median(alone)) * 1000
    return [
        (f"API streamed tokens/s ({n_tokens} tokens, openai client)", f"{api_rate:.1f}", f"{api_rate / ask_rate:.2f}", ">= 0.95"),
        ("API overhead per request, ms (whole reply, client vs in process)", f"{overhead_ms:.1f}", "", "reported"),
    ]
