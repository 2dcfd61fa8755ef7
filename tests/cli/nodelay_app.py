"""ASGI app factories for tests of how ``dpopkit serve`` and ``serve-api`` run uvicorn.

``make_app`` answers with TCP_NODELAY of the connection it serves: it finds that
connection among its own process's file descriptors by the client's port
(``scope["client"]``), then reads the option on a duplicate of the descriptor (the same
socket). It runs inside uvicorn's worker processes, where a test cannot reach otherwise.
``make_peer_app`` answers with the client address uvicorn put in the scope.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def _nodelay_of_peer(port: int) -> int:
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue  # closed since the listing
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)  # not a socket
            continue
        try:
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            if inet and sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except OSError:
            pass
        finally:
            sock.close()
    return -1


def make_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = str(_nodelay_of_peer(scope["client"][1])).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def make_peer_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = str(scope["client"][0]).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
