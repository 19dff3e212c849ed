"""`appliance serve`: the OpenAI chat-completions protocol on a Unix socket, for programs of the appliance's own user.

    POST /v1/chat/completions   a reply, whole or streamed (server-sent events), journalled as `ask` journals it
    GET  /v1/models             the active base, the one model served
    GET  /health                ok, the model, and how many requests are queued or decoding

`server.serve` runs it in the lifecycle of `service.UnlockedAppliance`; `requests` says what a
request may hold, `peer` who may connect, `errors` how a refusal reads.
"""

from .server import serve, socket_path

__all__ = ["serve", "socket_path"]
