"""A TCP proxy on 127.0.0.1 that can stop forwarding while keeping every connection open.

It stands between a store (PostgreSQL, Redis) and its client to play a frozen
server, a stalled proxy or a stuck pooler: after :meth:`FreezeProxy.freeze`,
connections stay open and new ones are accepted, but no byte moves in either
direction until :meth:`FreezeProxy.thaw`. Threads only, so it serves sync and
async clients alike.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FreezeProxy", "frozen_proxy", "via_proxy"]


class FreezeProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` until frozen.

    Args:
        target: the ``(host, port)`` of the real server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._spawn(self._accept_loop)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._track(client)
            self._spawn(self._open, client)

    def _open(self, client: socket.socket) -> None:
        # A frozen upstream does not answer; the connection to it is made only once flowing.
        self._wait_flowing()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        self._spawn(self._pump, client, upstream)
        self._spawn(self._pump, upstream, client)

    def _wait_flowing(self) -> bool:
        while not self._flowing.wait(0.05):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or not self._wait_flowing():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect."""
        return ("127.0.0.1", self.port)

    def freeze(self, *, thaw_after: float | None = None) -> None:
        """Stop forwarding in both directions; connections stay open.

        Args:
            thaw_after: forward again by itself after this many seconds (an outage of
                bounded length, which also bounds a test whose client never gives up).
        """
        self._flowing.clear()
        if thaw_after is not None:
            timer = threading.Timer(thaw_after, self.thaw)
            timer.daemon = True
            timer.start()

    def thaw(self) -> None:
        """Forward again (what was held is delivered)."""
        self._flowing.set()

    def close(self) -> None:
        """Close the listener and every connection."""
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=2)

    def __enter__(self) -> FreezeProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def via_proxy(url: str, proxy: FreezeProxy) -> str:
    """``url`` (``postgresql://``, ``redis://``, ...) with the proxy's host and port."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))


@contextlib.contextmanager
def frozen_proxy(url: str, default_port: int) -> Iterator[tuple[FreezeProxy, str]]:
    """A :class:`FreezeProxy` in front of the server of ``url`` and the URL through it."""
    parts = urlsplit(url)
    with FreezeProxy((parts.hostname or "127.0.0.1", parts.port or default_port)) as proxy:
        yield proxy, via_proxy(url, proxy)
