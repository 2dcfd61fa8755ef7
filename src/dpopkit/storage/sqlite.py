"""SQLite replay cache: several processes on one host share one database file.

RFC 9449 §11.1 asks the server to remember every ``jti`` for as long as the
proof could still be accepted. This backend keeps them in a WAL-mode SQLite
table ``(key TEXT PRIMARY KEY, expires_at REAL)`` with an absolute expiry
(seconds since the epoch, on the caller's clock, which is injected as ``now``).

One statement decides, atomically, across processes too (SEC-74,
SEC-75)::

    INSERT INTO t (key, expires_at) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
    WHERE t.expires_at <= :now

It writes a row (True: the key was new, or its old entry had expired) or
writes nothing (False: the key is live). SQLite serialises writers, so two
processes presenting the same proof at once cannot both win.

Expired rows are purged periodically, but only once they are ``purge_grace``
seconds past their expiry: a backward step of the clock smaller than that
cannot bring a purged key back (SEC-76).

Fail closed (SEC-80): when the database is locked beyond the bounded
``busy_timeout`` and ``retries``, or cannot be opened or written, the cache
raises :class:`~dpopkit.errors.ReplayStoreError`; it never answers "not seen".
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from dpopkit._private import create_private_file
from dpopkit._threads import to_thread
from dpopkit.errors import ReplayStoreError

__all__ = ["AsyncSQLiteReplayCache", "SQLiteReplayCache"]

_T = TypeVar("_T")

_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _check_identifier(name: str) -> str:
    if not name or not (name[0].isalpha() or name[0] == "_"):
        raise ValueError("table must be a plain SQL identifier")
    if not all(ch.isalnum() or ch == "_" for ch in name) or not name.isascii():
        raise ValueError("table must be a plain SQL identifier")
    return name


class SQLiteReplayCache:
    """A :class:`~dpopkit.ReplayCache` in a SQLite file, shared by processes on one host.

    Thread-safe: every thread uses its own connection. The file is opened lazily,
    so a bad path surfaces as :class:`~dpopkit.errors.ReplayStoreError` on first use.

    Args:
        path: the database file (its directory must be writable: WAL needs side files).
        table: the table name (a plain identifier).
        busy_timeout: seconds SQLite waits for the write lock per attempt.
        retries: further attempts after a ``database is locked`` before failing closed.
        purge_interval: seconds (on the injected clock) between purges of expired rows.
        purge_grace: rows are deleted only this many seconds after their expiry, so a
            backward clock step up to this size cannot revive a key (SEC-76).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "dpopkit_replay",
        busy_timeout: float = 0.5,
        retries: int = 2,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        if busy_timeout <= 0 or retries < 0 or purge_interval <= 0 or purge_grace < 0:
            raise ValueError("timeouts, intervals and grace must be positive")
        self.path = os.fspath(path)
        self.table = _check_identifier(table)
        self.busy_timeout = busy_timeout
        self.retries = retries
        self.purge_interval = purge_interval
        self.purge_grace = purge_grace
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._last_purge: float | None = None
        t = self.table
        self._upsert = (
            f"INSERT INTO {t} (key, expires_at) VALUES (?, ?) "  # noqa: S608 - identifier checked
            f"ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
            f"WHERE {t}.expires_at <= ?"
        )
        self._delete = f"DELETE FROM {t} WHERE expires_at <= ?"  # noqa: S608

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path not in ("", ":memory:"):
            with contextlib.suppress(OSError):  # a missing directory fails in connect below
                create_private_file(self.path)  # 0600, and so its -wal and -shm files
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit: every statement is its own transaction
            check_same_thread=False,  # only close() touches it from another thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError("cannot switch the database to WAL mode")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_expires_at ON {self.table} (expires_at)"
            )
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop_conn(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()

    def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``op`` with bounded retries on a locked database; fail closed otherwise."""
        attempt = 0
        while True:
            try:
                return op(self._conn())
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                locked = code in _LOCKED_CODES or "locked" in str(exc)
                if not locked:
                    self._drop_conn()
                if locked and attempt < self.retries:
                    attempt += 1
                    time.sleep(0.01 * attempt)
                    continue
                raise ReplayStoreError(
                    detail={"error": type(exc).__name__, "locked": locked}
                ) from exc
            except sqlite3.Error as exc:
                self._drop_conn()
                raise ReplayStoreError(detail={"error": type(exc).__name__}) from exc

    # -- the protocol ------------------------------------------------------------------------

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        An existing row whose ``expires_at`` is at or before ``now`` is replaced in
        the same statement, so an expired key is new again and a live one is not.

        Raises:
            ReplayStoreError: the database cannot be opened, is locked beyond the
                bounded retries, or failed; the caller refuses the request.
        """
        if self._purge_due(now):
            self.purge(now=now)  # a store that cannot purge cannot answer either

        def op(conn: sqlite3.Connection) -> bool:
            # RFC 9449 §11.1: one atomic statement decides (SEC-74)
            cur = conn.execute(self._upsert, (key, float(expires_at), float(now)))
            return cur.rowcount == 1

        return self._run(op)

    def _purge_due(self, now: float) -> bool:
        last = self._last_purge
        # a clock that stepped back by more than an interval also restarts the schedule
        return last is None or now >= last + self.purge_interval or now < last - self.purge_interval

    def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many.

        Raises:
            ReplayStoreError: the database failed.
        """
        self._last_purge = now
        cutoff = now - self.purge_grace
        return self._run(lambda conn: conn.execute(self._delete, (cutoff,)).rowcount)

    def close(self) -> None:
        """Close every connection this cache opened (call when no request is running)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class AsyncSQLiteReplayCache:
    """The :class:`SQLiteReplayCache` behind the async protocol, run in worker threads.

    Uses ``anyio.to_thread`` when anyio is installed (asyncio and trio), else
    ``asyncio.to_thread``. Takes the same arguments as :class:`SQLiteReplayCache`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "dpopkit_replay",
        busy_timeout: float = 0.5,
        retries: int = 2,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        self.sync = SQLiteReplayCache(
            path,
            table=table,
            busy_timeout=busy_timeout,
            retries=retries,
            purge_interval=purge_interval,
            purge_grace=purge_grace,
        )

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        Raises:
            ReplayStoreError: as :meth:`SQLiteReplayCache.check_and_store`.
        """
        call = functools.partial(self.sync.check_and_store, key, expires_at, now=now)
        return await to_thread(call)

    async def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many."""
        return await to_thread(functools.partial(self.sync.purge, now=now))

    def close(self) -> None:
        """Close every connection (call when no request is running)."""
        self.sync.close()
