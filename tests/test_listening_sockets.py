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
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
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


_CONSTRUCTORS = {"socket.socket", "socket"}  # ``import socket`` or ``from socket import socket``
_STREAM = {"socket.SOCK_STREAM", "SOCK_STREAM", "socket.SocketKind.SOCK_STREAM"}
_TCP = {"socket.IPPROTO_TCP", "IPPROTO_TCP"}


def _stream_sockets_without_tcp(source: str) -> list[int]:
    """Lines that make a stream socket (``SOCK_STREAM``, given or the default) whose
    protocol is not IPPROTO_TCP; a socket wrapping a descriptor (``fileno=``) or of
    family AF_UNIX is not made here."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func) in _CONSTRUCTORS):
            continue
        names = ("family", "type", "proto", "fileno")
        given = {name: ast.unparse(arg) for name, arg in zip(names, node.args, strict=False)}
        given |= {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg is not None}
        if "fileno" in given or "AF_UNIX" in given.get("family", ""):
            continue
        if given.get("type", "socket.SOCK_STREAM") in _STREAM and given.get("proto") not in _TCP:
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("socket.socket(socket.AF_INET, socket.SOCK_STREAM)", True),
        ("socket.socket(socket.AF_INET, type=socket.SOCK_STREAM)", True),
        ("socket.socket(family=socket.AF_INET6, type=socket.SOCK_STREAM, proto=0)", True),
        ("socket.socket()", True),  # SOCK_STREAM by default
        ("socket(AF_INET, SOCK_STREAM)", True),
        ("socket(AF_INET, type=SOCK_STREAM)", True),
        ("socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)", False),
        ("socket.socket(socket.AF_INET, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)", False),
        ("socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)", False),
        ("socket.socket(socket.AF_INET, socket.SOCK_DGRAM)", False),
        ("socket.socket(fileno=fd)", False),
        ("socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)", False),
    ],
)
def test_the_protocol_check_sees_every_form(source: str, flagged: bool) -> None:
    """The source check below finds positional and keyword arguments, and calls of a
    ``socket`` imported from the socket module."""
    assert bool(_stream_sockets_without_tcp(source)) is flagged


def test_no_stream_socket_without_its_protocol() -> None:
    """No stream socket made in the source leaves out IPPROTO_TCP."""
    offenders = [
        f"{path.relative_to(SRC)}:{line}"
        for path in SRC.rglob("*.py")
        for line in _stream_sockets_without_tcp(path.read_text())
    ]
    assert offenders == []


_SERVE = """
import importlib, sys
from dpopkit.cli._serving import bind, run_uvicorn
if __name__ == "__main__":
    sock = bind("127.0.0.1", int(sys.argv[1]))
    module, name = sys.argv[3].split(":")
    app = getattr(importlib.import_module(module), name)()
    run_uvicorn(app, sock=sock, log_level="warning", access_log=False,
                workers=int(sys.argv[2]), factory=sys.argv[3])
"""


def _answers(
    workers: int, factory: str, headers: dict[str, str], env: dict[str, str] | None = None
) -> list[str]:
    """Four answers of ``run_uvicorn`` serving ``factory``, each on a new connection."""
    probe = bind("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    paths = [str(Path(__file__).parent / "cli"), *sys.path]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(port), str(workers), factory],
        env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(paths)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        answers: list[str] = []
        while len(answers) < 4:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not answer"
            try:
                with httpx.Client(timeout=5) as http:  # a new connection each time
                    answers.append(http.get(f"http://127.0.0.1:{port}/", headers=headers).text)
            except httpx.TransportError:
                time.sleep(0.1)
        return answers
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_set_tcp_nodelay(workers: int) -> None:
    """With ``--workers N`` each uvicorn worker serves the socket ``bind`` made, and its
    connections have TCP_NODELAY too (uvicorn's ``fd=`` path rebuilds the socket as
    AF_UNIX, and asyncio then leaves Nagle's algorithm on)."""
    answers = _answers(workers, "nodelay_app:make_app", {})
    assert all(a.isdigit() and int(a) > 0 for a in answers), answers


@pytest.mark.parametrize("workers", [1, 2])
def test_forwarded_for_is_believed_only_from_configured_proxies(workers: int) -> None:
    """The client address (login throttle, ``/register`` limit) is the TCP peer: a
    loopback peer's ``X-Forwarded-For`` counts only when FORWARDED_ALLOW_IPS names it."""
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    assert _answers(workers, "nodelay_app:make_peer_app", forwarded) == ["127.0.0.1"] * 4
    trusted = _answers(
        workers, "nodelay_app:make_peer_app", forwarded, {"FORWARDED_ALLOW_IPS": "127.0.0.1"}
    )
    assert trusted == ["203.0.113.9"] * 4
