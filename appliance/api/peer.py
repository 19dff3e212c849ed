"""Who is on the other end of a connection: the kernel's word (SO_PEERCRED), checked on every connection.

The socket file is 0600 in a 0700 directory, so the file system already keeps other users out;
this is the second wall, for a socket reached some other way (a mode changed by hand, a descriptor
passed on): a peer whose uid is not the appliance's own is closed before a byte of HTTP is read,
so it can ask nothing and nothing is journalled.
"""

import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
log = logging.getLogger("uvicorn.error")  # the server's own log channel (stderr)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    exe: Optional[str]  # /proc/<pid>/exe as the kernel reports it; None if it is gone or unreadable

    def client_record(self) -> dict:
        """The journal's `client` field."""
        return {"pid": self.pid, "exe": self.exe}


def peer_of(sock) -> Peer:
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        exe: Optional[str] = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    return Peer(pid, uid, exe)


def allowed(peer: Peer) -> bool:
    """Only the appliance's own user (root included only when the appliance runs as root)."""
    return peer.uid == os.geteuid()


class OwnerOnlyProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, refusing other users' connections and telling the app who asked.

    The peer travels in the ASGI scope under `PEER` (a scope may carry keys of its server's own)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = peer_of(transport.get_extra_info("socket"))
        if not allowed(peer):
            log.warning("refused a connection from uid %d (pid %d, %s): not the appliance's user", peer.uid, peer.pid, peer.exe)
            transport.close()
            return
        app = self.app

        async def with_peer(scope, receive, send):
            return await app({**scope, PEER: peer}, receive, send)

        self.app = with_peer


PEER = "appliance.peer"
