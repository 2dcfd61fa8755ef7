"""Every listening socket dpopkit opens answers without Nagle's delay.

asyncio turns on ``TCP_NODELAY`` for a connection only when its socket's protocol
number says TCP. A socket made as ``socket.socket(family, SOCK_STREAM)`` has protocol
0, so uvicorn's connections on it kept Nagle's algorithm: a response written in two
parts (headers, then body) waited for the client's delayed ACK, about 40 ms per
request on Linux, whatever the server's own speed. These tests check the mechanism
on every socket dpopkit binds, and that no other place in the source makes one.
"""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from dpopkit.cli._serving import bind

SRC = Path(__file__).resolve().parents[1] / "src" / "dpopkit"


def _demo_bind() -> socket.socket:
    from dpopkit.demo.servers import _bind

    return _bind()


async def _nodelay_of_accepted(sock: socket.socket) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(seen, 5)
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "make",
    [lambda: bind("127.0.0.1", 0), _demo_bind],
    ids=["serve-and-serve-api", "demo"],
)
def test_accepted_connections_have_tcp_nodelay(make: Callable[[], socket.socket]) -> None:
    """``dpopkit serve``, ``serve-api`` and the demo bind sockets on which asyncio sets
    TCP_NODELAY, so a response is never held back for the peer's delayed ACK."""
    sock = make()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert asyncio.run(_nodelay_of_accepted(sock)) != 0
    finally:
        sock.close()


def test_no_stream_socket_without_its_protocol() -> None:
    """No ``socket.socket(..., SOCK_STREAM)`` in the source leaves out IPPROTO_TCP."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "socket.socket"):
                continue
            args = [ast.unparse(a) for a in node.args]
            if "socket.SOCK_STREAM" in args and "socket.IPPROTO_TCP" not in args:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
