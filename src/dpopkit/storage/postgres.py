"""PostgreSQL replay cache: several hosts share one database (psycopg 3, sync and asyncio).

RFC 9449 §11.1 asks the server to remember every ``jti`` while the proof could
still be accepted. Rows live in ``dpopkit_replay(key text primary key,
expires_at double precision)`` with an absolute expiry (seconds since the
epoch, on the caller's clock, injected as ``now``). One statement decides,
atomically, across instances too (SEC-74, SEC-75)::

    INSERT INTO dpopkit_replay (key, expires_at) VALUES (%s, %s)
    ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE dpopkit_replay.expires_at <= %(now)s
    RETURNING 1

A row comes back when the key was new or its old entry had expired, and none
when it is live. Under concurrent inserts of one key PostgreSQL makes the
second wait for the first and then re-checks the ``WHERE`` on the committed
row, so exactly one presenter wins.

Expired rows are purged periodically, only ``purge_grace`` seconds after their
expiry, so a backward clock step smaller than that cannot revive a key
(SEC-76).

Fail closed (SEC-80): any database error raises
:class:`~dpopkit.errors.ReplayStoreError` and that connection is discarded.
Each call has a client-side deadline (``timeout``, 2 s by default): a server
that keeps the connection open but stops answering (frozen, or behind a
stalled proxy or pooler) is cut off when it passes
(:mod:`dpopkit.storage._deadline`), because ``statement_timeout`` runs on the
server and TCP keepalives see a live peer. Calls run on a small pool of
connections, so a stuck call holds only its own.

The psycopg package is imported only by this module (``pip install dpopkit[postgres]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dpopkit.errors import ReplayStoreError, requires_extra
from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT, Deadline, check_timeout

with requires_extra("postgres", needed_by=__name__):
    import psycopg
    import psycopg.errors
    from psycopg import sql

__all__ = ["AsyncPostgresReplayCache", "PostgresReplayCache"]


# CREATE ... IF NOT EXISTS run by two sessions at once can still collide in the catalog.
_CREATE_RACES = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DuplicateObject,
    psycopg.errors.DuplicateTable,
    psycopg.errors.DuplicateSchema,
)

#: Seconds allowed to establish a connection (libpq rounds up to at least 2).
DEFAULT_CONNECT_TIMEOUT = 2
#: Milliseconds a statement (or a lock wait) may take on the server.
DEFAULT_STATEMENT_TIMEOUT_MS = 1000
#: Connections one cache holds at most.
DEFAULT_MAX_CONNECTIONS = 10

_T = TypeVar("_T")


class _Statements:
    """The SQL of one cache, with the schema and table names quoted."""

    def __init__(self, schema: str | None, table: str) -> None:
        if not table or (schema is not None and not schema):
            raise ValueError("schema and table must be non-empty")
        ident = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        pkey = sql.Identifier(f"{table}_pkey")
        index = sql.Identifier(f"{table}_expires_at")
        self.create: list[sql.Composed] = []
        if schema:
            self.create.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        self.create.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL, "
                "expires_at double precision NOT NULL, CONSTRAINT {} PRIMARY KEY (key))"
            ).format(ident, pkey)
        )
        self.create.append(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (expires_at)").format(index, ident)
        )
        self.upsert = sql.SQL(
            "INSERT INTO {t} AS r (key, expires_at) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
            "WHERE r.expires_at <= %s RETURNING 1"
        ).format(t=ident)
        self.purge = sql.SQL("DELETE FROM {} WHERE expires_at <= %s").format(ident)


def _conn_kwargs(connect_timeout: int, statement_timeout_ms: int) -> dict[str, Any]:
    return {
        "autocommit": True,
        "connect_timeout": max(1, int(connect_timeout)),
        "options": f"-c statement_timeout={int(statement_timeout_ms)} "
        f"-c lock_timeout={int(statement_timeout_ms)}",
        # a server that stops answering mid-statement: give up at the same bound
        "tcp_user_timeout": int(max(statement_timeout_ms, connect_timeout * 1000)),
        "keepalives": 1,
    }


def _store_error(exc: BaseException) -> ReplayStoreError:
    return ReplayStoreError(detail={"error": type(exc).__name__, "backend": "postgres"})


class _Schedule:
    """When to purge, on the injected clock (a big backward step restarts it)."""

    def __init__(self, interval: float, grace: float) -> None:
        if interval <= 0 or grace < 0:
            raise ValueError("purge_interval must be > 0 and purge_grace >= 0")
        self.interval = interval
        self.grace = grace
        self.last: float | None = None

    def due(self, now: float) -> bool:
        last = self.last
        return last is None or now >= last + self.interval or now < last - self.interval


class _Budget:
    """One operation's time budget (monotonic), shared by its pool wait and statements."""

    __slots__ = ("at",)

    def __init__(self, timeout: float) -> None:
        self.at = time.monotonic() + timeout

    def left(self) -> float:
        return self.at - time.monotonic()


def _timed_out(stage: str) -> ReplayStoreError:
    return ReplayStoreError(detail={"error": "Timeout", "stage": stage, "backend": "postgres"})


class PostgresReplayCache:
    """A :class:`~dpopkit.ReplayCache` in a PostgreSQL table, shared by hosts.

    Thread-safe: every call takes a connection of its own from a small pool
    (opened lazily, at most ``max_connections``), so one stuck call never makes
    the others wait. Every call finishes or raises
    :class:`~dpopkit.errors.ReplayStoreError` within ``timeout`` seconds, measured
    on the client: the wait for a free connection and the statements share that
    budget, and a connection whose statement overruns it is cut
    (:mod:`dpopkit.storage._deadline`) and discarded. A call that opens a new
    connection may take ``connect_timeout`` instead when that is longer; a call
    that had to wait for a free slot never opens one (it fails closed if the slot
    came back without a connection), so the two bounds never add up.

    Args:
        dsn: a libpq connection string or URL.
        schema: the schema holding the table (created if missing); None uses the
            search path.
        table: the table name.
        create_table: create the schema, table and index on first use.
        timeout: client-side seconds one call may take (default 2).
        max_connections: connections held at most; further callers wait (within
            ``timeout``) for a free one.
        connect_timeout: seconds to establish a connection (libpq: at least 2).
        statement_timeout_ms: server-side bound on every statement and lock wait.
        purge_interval: seconds (on the injected clock) between purges.
        purge_grace: rows are deleted only this many seconds after their expiry, so a
            backward clock step up to this size cannot revive a key (SEC-76).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        table: str = "dpopkit_replay",
        create_table: bool = True,
        timeout: float = DEFAULT_STORE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.dsn = dsn
        self.timeout = check_timeout(timeout)
        self.max_connections = max_connections
        self._sql = _Statements(schema, table)
        self._create_table = create_table
        self._kwargs = _conn_kwargs(connect_timeout, statement_timeout_ms)
        self._schedule = _Schedule(purge_interval, purge_grace)
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()  # guards _idle, _generation and _schedule
        self._create_lock = threading.Lock()  # one creator of the table per cache
        self._generation = 0  # bumped by close(): older connections are not pooled again
        self._created = not create_table

    def _run(self, op: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run ``op`` on a pooled connection within the budget; fail closed otherwise."""
        budget = _Budget(self.timeout)
        waited = not self._slots.acquire(blocking=False)
        if waited and not self._slots.acquire(timeout=self.timeout):
            raise _timed_out("pool")
        conn: psycopg.Connection[Any] | None = None
        deadline: Deadline | None = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
                generation = self._generation
            if conn is None or conn.closed:
                if waited:  # the slot freed without a connection: one failed; do not stack
                    raise _timed_out("pool")  # a connect_timeout on top of the wait
                conn = psycopg.connect(self.dsn, **self._kwargs)  # bounded by connect_timeout
            with Deadline(conn.pgconn.socket, budget.left()) as deadline:
                if not self._created:
                    with self._create_lock:  # one creator per cache; other processes may race
                        if not self._created:
                            for stmt in self._sql.create:
                                try:
                                    conn.execute(stmt)
                                except _CREATE_RACES:  # another process created it meanwhile
                                    conn.execute(stmt)
                            self._created = True
                result = op(conn)
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            if deadline is not None and deadline.fired:
                raise _timed_out("statement") from exc
            raise _store_error(exc) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        else:
            assert deadline is not None
            with self._lock:
                # cut just as it finished (the answer stands, the socket not), or closed meanwhile
                keep = not deadline.fired and generation == self._generation
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()
            return result
        finally:
            self._slots.release()

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        An existing row whose ``expires_at`` is at or before ``now`` is replaced in
        the same statement, so an expired key is new again and a live one is not.

        Raises:
            ReplayStoreError: PostgreSQL failed or did not answer within ``timeout``;
                the caller refuses the request.
        """
        with self._lock:
            purge = self._schedule.due(now)
            if purge:
                self._schedule.last = now
        params = (key, float(expires_at), float(now))

        def op(conn: psycopg.Connection[Any]) -> bool:
            if purge:  # a store that cannot purge cannot answer either
                conn.execute(self._sql.purge, (now - self._schedule.grace,))
            # RFC 9449 §11.1: one atomic statement decides (SEC-74)
            return conn.execute(self._sql.upsert, params).fetchone() is not None

        return self._run(op)

    def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many.

        Raises:
            ReplayStoreError: PostgreSQL failed or did not answer within ``timeout``.
        """
        with self._lock:
            self._schedule.last = now
        cutoff = now - self._schedule.grace
        return self._run(lambda conn: conn.execute(self._sql.purge, (cutoff,)).rowcount)

    def close(self) -> None:
        """Close the idle connections (a call in flight closes its own when it ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn in idle:
            conn.close()


class AsyncPostgresReplayCache:
    """The asyncio :class:`~dpopkit.AsyncReplayCache` over ``psycopg.AsyncConnection``.

    psycopg's async connections run on asyncio only; under trio use
    :class:`PostgresReplayCache` in a worker thread. Arguments and time bounds as
    :class:`PostgresReplayCache`: each call uses a pooled connection of its own and
    finishes or fails within ``timeout``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        table: str = "dpopkit_replay",
        create_table: bool = True,
        timeout: float = DEFAULT_STORE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.dsn = dsn
        self.timeout = check_timeout(timeout)
        self.max_connections = max_connections
        self._sql = _Statements(schema, table)
        self._create_table = create_table
        self._kwargs = _conn_kwargs(connect_timeout, statement_timeout_ms)
        self._schedule = _Schedule(purge_interval, purge_grace)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: asyncio.Semaphore | None = None
        self._create_lock: asyncio.Lock | None = None
        self._generation = 0  # bumped by aclose(): older connections are not pooled again
        self._created = not create_table

    def _get_slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        return self._slots

    def _get_create_lock(self) -> asyncio.Lock:
        if self._create_lock is None:
            self._create_lock = asyncio.Lock()
        return self._create_lock

    async def _run(self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        budget = _Budget(self.timeout)
        slots = self._get_slots()
        waited = slots.locked()
        try:
            async with asyncio.timeout(self.timeout):
                await slots.acquire()
        except TimeoutError:
            raise _timed_out("pool") from None
        conn: psycopg.AsyncConnection[Any] | None = None
        deadline: Deadline | None = None
        try:
            conn = self._idle.pop() if self._idle else None
            generation = self._generation
            if conn is None or conn.closed:
                if waited:  # as in PostgresReplayCache._run
                    raise _timed_out("pool")
                conn = await psycopg.AsyncConnection.connect(self.dsn, **self._kwargs)
            with Deadline(conn.pgconn.socket, budget.left()) as deadline:
                if not self._created:
                    async with self._get_create_lock():  # as in PostgresReplayCache._run
                        if not self._created:
                            for stmt in self._sql.create:
                                try:
                                    await conn.execute(stmt)
                                except _CREATE_RACES:
                                    await conn.execute(stmt)
                            self._created = True
                result = await op(conn)
        except psycopg.Error as exc:
            if conn is not None:
                await conn.close()
            if deadline is not None and deadline.fired:
                raise _timed_out("statement") from exc
            raise _store_error(exc) from exc
        except BaseException:
            if conn is not None:
                await _close_quietly(conn)
            raise
        else:
            assert deadline is not None
            if deadline.fired or generation != self._generation:
                await conn.close()
            else:
                self._idle.append(conn)
            return result
        finally:
            slots.release()

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        Raises:
            ReplayStoreError: PostgreSQL failed or did not answer within ``timeout``;
                the caller refuses the request.
        """
        purge = self._schedule.due(now)
        if purge:
            self._schedule.last = now
        params = (key, float(expires_at), float(now))

        async def op(conn: psycopg.AsyncConnection[Any]) -> bool:
            if purge:
                await conn.execute(self._sql.purge, (now - self._schedule.grace,))
            # RFC 9449 §11.1: one atomic statement decides (SEC-74)
            cur = await conn.execute(self._sql.upsert, params)
            return await cur.fetchone() is not None

        return await self._run(op)

    async def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many.

        Raises:
            ReplayStoreError: PostgreSQL failed or did not answer within ``timeout``.
        """
        self._schedule.last = now
        cutoff = now - self._schedule.grace

        async def op(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(self._sql.purge, (cutoff,))).rowcount

        return await self._run(op)

    async def aclose(self) -> None:
        """Close the idle connections (a call in flight closes its own when it ends)."""
        idle, self._idle = self._idle, []
        self._generation += 1
        for conn in idle:
            await conn.close()


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    # A cancelled call: closing must not raise over the cancellation.
    with contextlib.suppress(Exception):
        await conn.close()
