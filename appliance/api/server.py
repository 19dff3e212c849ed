"""The API server: Starlette routes on uvicorn, on a Unix socket, in front of the one unlocked appliance.

Rules:
1. the socket is `<state>/api/api.sock`, 0600 in a 0700 directory, bound and chmodded before it
   listens (uvicorn's own `uds=` binding makes the file 0666); it exists only while the appliance is
   unlocked and serving, and is removed however serving ends;
2. every connection's peer is checked (`peer.OwnerOnlyProtocol`);
3. a request is read up to the size cap and parsed (`requests.parse_chat_request`) on the event
   loop: a refusal is answered there with the error object and never reaches the model or the journal;
4. requests are decoded one at a time on one worker thread, in arrival order (the model is blocking
   C, and one KV state must never hold two interleaved decodes); the health route shows how many
   are queued or decoding;
5. a request is a journal session of its own, or continues the one it names (`UnlockedAppliance.resume`,
   the same as `ask --resume`); the reply streams from the worker to the client as it is decoded;
6. a client that goes away mid-stream stops its decode within one token, as a kill would (the reply is
   journalled with finish `cancelled`), so a gone client does not hold the queue;
7. a kill stops the decode within one token: the client's stream ends with an error event (code
   `killed`), the server stops and the socket is removed; then the caller's lifecycle handles the kill.
"""

import asyncio
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socket import AF_UNIX, SOCK_STREAM, socket
from typing import Optional

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ApplianceError, Refused
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Reply, Runtime
from ..service import UnlockedAppliance
from .errors import RequestTooLarge, error_object, status_of
from .peer import PEER, OwnerOnlyProtocol, Peer
from .requests import MAX_BODY, ChatRequest, parse_chat_request

SOCKET_DIR = "api"
SOCKET_NAME = "api.sock"
GRACE_SECONDS = 5  # a stream still open when the server stops (a kill ended its decode: it closes at once)


def socket_path(home: Path) -> Path:
    return home / SOCKET_DIR / SOCKET_NAME


class Api:
    """The routes, the one decode worker and its queue."""

    def __init__(self, app: UnlockedAppliance, runtime: Runtime):
        self.app, self.runtime = app, runtime
        self.model_name = app.model.name
        self.queued = 0  # requests waiting for the worker or decoding on it (touched on the event loop only)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="appliance-decode")
        self.asgi = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            ]
        )

    def close(self) -> None:
        """Wait for the decode in flight (a kill has cut it short) and stop the worker."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_name, "queue": self.queued})

    async def models(self, request: Request) -> Response:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "appliance"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completions(self, request: Request) -> Response:
        try:
            chat = parse_chat_request(await _read_body(request), self.model_name)
        except ApplianceError as e:  # rule 3: refused on the event loop, before the queue
            return _error(e)
        events = _Events(asyncio.get_running_loop(), self.app.cancel)
        self.queued += 1
        done = asyncio.get_running_loop().run_in_executor(self._worker, self._decode, chat, request.scope[PEER], events)
        done.add_done_callback(self._dequeued)
        kind, value = await events.get()
        if kind == "error":  # refused before the first record (window, overlay, session): nothing journalled
            return _error(value)
        completion = _Completion(self.model_name, session=value)
        if chat.stream:
            return StreamingResponse(_server_sent(completion, events), media_type="text/event-stream")
        text = []
        while (event := await events.get())[0] == "text":
            text.append(event[1])
        if event[0] == "error":
            return _error(event[1])
        return JSONResponse(completion.whole("".join(text), event[1]))

    def _dequeued(self, _done) -> None:
        self.queued -= 1

    def _decode(self, chat: ChatRequest, peer: Peer, events: "_Events") -> None:
        """On the worker thread, one request at a time (rule 4-5)."""
        try:
            self.app.killswitch.check()  # queued before a kill: not started after it
            settings = SamplingSettings(temperature=chat.temperature, seed=chat.seed)
            if chat.session is not None:
                session = self.app.resume(self.runtime, chat.session, settings=settings, on=chat.on).session
            else:
                self.app.close_journal()  # a session of its own, opened at its first record
                session = self.app.session(self.runtime, settings=settings, system_prompt=chat.system_prompt, on=chat.on)
            on_text = events.starting(lambda: self.app.journal.session_id if self.app.journal else "")
            reply = self.app.reply(
                session, chat.prompt, max_tokens=chat.max_tokens, on_text=on_text, client=peer.client_record(), cancel=events.stop
            ).reply
            self.app.killswitch.check()  # a reply cut short by a kill ends in the kill's error, as in the chat
            on_text("")
            events.put("done", reply)
        except BaseException as e:  # the client is told; a bug is named, and the server goes on
            events.put("error", e)


class _Events:
    """What the worker thread hands the request's coroutine: ("start", session id), ("text", str)...,
    then ("done", Reply) or ("error", exception)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kill: threading.Event):
        self._loop, self._queue = loop, asyncio.Queue()  # type: ignore[var-annotated]
        self.stop = _Stop(kill)  # the decode loop's cancel: the kill, or the client gone (rule 6)

    def put(self, kind: str, value) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    async def get(self) -> tuple:
        return await self._queue.get()

    def starting(self, session_id: Callable[[], str]) -> Callable[[str], None]:
        """`on_text` for the reply: the first call (once the user's message is journalled) says the session."""
        started = False

        def on_text(piece: str) -> None:
            nonlocal started
            if not started:
                started = True
                self.put("start", session_id())
            if piece:
                self.put("text", piece)

        return on_text


class _Stop(threading.Event):
    """Set when the client is gone; reads as set when the kill-switch has fired too."""

    def __init__(self, kill: threading.Event):
        super().__init__()
        self._kill = kill

    def is_set(self) -> bool:
        return super().is_set() or self._kill.is_set()


class _Completion:
    """The protocol's objects for one reply; `session` is this API's extra field (continue with it)."""

    def __init__(self, model: str, session: str):
        self.id, self.created, self.model, self.session = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model, session

    def _object(self, kind: str, choice: dict, **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice],
                "session": self.session, **extra}  # fmt: skip

    def chunk(self, delta: dict, finish: Optional[str] = None) -> str:
        return _event(self._object("chat.completion.chunk", {"index": 0, "delta": delta, "finish_reason": finish}))

    def whole(self, text: str, reply: Reply) -> dict:
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.tokens),
                 "total_tokens": reply.prompt_tokens + len(reply.tokens)}  # fmt: skip
        message = {"role": "assistant", "content": text}
        return self._object("chat.completion", {"index": 0, "message": message, "finish_reason": reply.finish}, usage=usage)


async def _server_sent(completion: _Completion, events: _Events) -> AsyncIterator[str]:
    """The stream: a role chunk, a chunk per piece of text, the finish, `[DONE]`; or an error event.

    Closed early (the client went away), it stops the decode (rule 6)."""
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield completion.chunk({"content": value})
            elif kind == "done":
                yield completion.chunk({}, finish=value.finish)
                yield "data: [DONE]\n\n"
                return
            else:  # the protocol's error event: the official client raises it
                yield _event(error_object(value))
                return
    finally:
        events.stop.set()  # a no-op once the reply is done


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(error: BaseException) -> Response:
    return JSONResponse(error_object(error), status_code=status_of(error))


async def _read_body(request: Request) -> bytes:
    """Rule 1 of a request: at most MAX_BODY bytes, refused by its declared length or once past the cap."""
    declared = request.headers.get("content-length", "")
    too_large = RequestTooLarge(f"the request body is over the {MAX_BODY}-byte cap")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise too_large
    return bytes(body)


# -- serving ------------------------------------------------------------------------------------


def _listening_socket(path: Path) -> socket:
    """Rule 1: the directory 0700 and ours, the socket 0600 before it listens.

    A socket file already there is stale: the caller holds the kill-switch's pid file, so no other
    appliance serves this state directory."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(path.parent)
    if not os.path.isdir(path.parent) or os.path.islink(path.parent) or st.st_uid != os.geteuid():
        raise Refused(f"{path.parent} is not a directory of the appliance's own user")
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): until then a connect is refused
        sock.listen(64)
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)
        raise
    return sock


def serve(app: UnlockedAppliance, runtime: Runtime, path: Path, on_ready: Callable[[], None] = lambda: None) -> None:
    """Serve until killed (raises Killed, after the server stopped and the socket is gone) or interrupted."""
    api = Api(app, runtime)
    config = uvicorn.Config(
        api.asgi, http=OwnerOnlyProtocol, lifespan="off", log_level="warning", access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )  # fmt: skip
    server = uvicorn.Server(config)
    sock = _listening_socket(path)
    failed: list[BaseException] = []

    def run() -> None:  # off the main thread: uvicorn then leaves the kill-switch's signal handlers alone
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=run, name="appliance-api")
    try:
        thread.start()
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        if server.started:
            on_ready()
        while thread.is_alive() and not app.cancel.wait(0.1):
            pass
    finally:
        server.should_exit = True
        thread.join()
        api.close()
        sock.close()
        path.unlink(missing_ok=True)
    app.killswitch.check()
    if failed:
        raise failed[0]
