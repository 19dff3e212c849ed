"""The peer check of the API (appliance/api/peer.py) on a real socket pair: the kernel's pid, uid and executable."""

import dataclasses
import os
import socket
import sys

from appliance.api.peer import allowed, peer_of


def test_the_peer_is_what_the_kernel_reports_and_only_the_owner_is_allowed():
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    with ours, theirs:
        peer = peer_of(ours)
    assert (peer.pid, peer.uid, peer.exe) == (os.getpid(), os.geteuid(), os.path.realpath(sys.executable))
    assert peer.client_record() == {"pid": os.getpid(), "exe": os.path.realpath(sys.executable)}
    assert allowed(peer)
    assert not allowed(dataclasses.replace(peer, uid=os.geteuid() + 1))
