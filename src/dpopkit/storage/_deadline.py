"""Client-side deadlines for store operations over a socket.

A server that keeps its connection open but stops answering (frozen, or
behind a stalled proxy or pooler) is invisible to every server-side bound:
``statement_timeout`` never fires on a server that does not run, TCP
keepalives and ``tcp_user_timeout`` see a live peer (the proxy acknowledges
every byte). Only the client can bound the wait.

:class:`Deadline` does it the same way for every driver, sync or asyncio:
one watchdog thread keeps the armed deadlines in a heap; when one passes,
it shuts the operation's socket down in both directions (``shutdown(2)`` on a
duplicate of the descriptor, which wakes whoever waits on it but never
closes or reuses the descriptor itself). The driver's pending read then fails
at once like a dropped connection, the caller discards that connection and
raises its store error (HTTP 503), and nothing waits for the server to come
back. Disarming takes the same lock as firing, so once :meth:`Deadline.disarm`
returns the descriptor is never touched again and the connection may be
closed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time

__all__ = ["DEFAULT_STORE_TIMEOUT", "Deadline", "check_timeout"]

#: Seconds one store operation may take, client side, before it fails closed (503).
DEFAULT_STORE_TIMEOUT = 2.0


def check_timeout(timeout: float) -> float:
    """Return ``timeout`` as a float if it is a positive finite number of seconds.

    Raises:
        ValueError: it is not.
    """
    value = float(timeout)
    if not 0 < value < float("inf"):
        raise ValueError("timeout must be a positive number of seconds")
    return value


def sever(fd: int) -> None:
    """Shut the socket behind ``fd`` down in both directions without closing ``fd``."""
    try:
        copy = os.dup(fd)
    except OSError:
        return
    try:
        dup = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)  # not a socket (any more)
        return
    with dup, contextlib.suppress(OSError):
        dup.shutdown(socket.SHUT_RDWR)


class Deadline:
    """One operation's deadline on one socket; see the module docstring.

    Use as a context manager around the operation, or :meth:`arm` / :meth:`disarm`.

    Args:
        fd: the connection's socket descriptor.
        timeout: seconds from now.
    """

    __slots__ = ("_lock", "at", "done", "fd", "fired")

    def __init__(self, fd: int, timeout: float) -> None:
        self.fd = fd
        self.at = time.monotonic() + timeout
        self.fired = False
        self.done = False
        self._lock = threading.Lock()

    def arm(self) -> Deadline:
        """Start watching."""
        _WATCHDOG.add(self)
        return self

    def disarm(self) -> None:
        """Stop watching; after this the socket is never touched by the watchdog."""
        with self._lock:
            self.done = True

    def fire(self) -> None:
        """Sever the socket now, unless the operation already finished."""
        with self._lock:
            if self.done:
                return
            self.done = self.fired = True
            sever(self.fd)

    def __enter__(self) -> Deadline:
        return self.arm()

    def __exit__(self, *exc: object) -> None:
        self.disarm()


class _Watchdog:
    """The one daemon thread that fires expired deadlines (started on first use)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():  # first use, or after fork
                self._pid = os.getpid()
                self._heap.clear()
                self._thread = threading.Thread(
                    target=self._run, name="dpopkit-store-deadline", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._heap[0][2] is deadline:
                self._cond.notify()

    def _run(self) -> None:
        heap = self._heap
        while True:
            due: list[Deadline] = []
            with self._cond:
                now = time.monotonic()
                while heap and (heap[0][2].done or heap[0][0] <= now):
                    deadline = heapq.heappop(heap)[2]
                    if not deadline.done:
                        due.append(deadline)
                if not due:
                    self._cond.wait(heap[0][0] - now if heap else None)
                    continue
            for deadline in due:
                deadline.fire()


_WATCHDOG = _Watchdog()
