"""PostgreSQL replay cache: several hosts share one database (psycopg 3, sync and asyncio).

RFC 9449 §11.1 asks the server to remember every ``jti`` while the proof could
still be accepted. Rows live in ``dpopkit_replay(key text primary key,
expires_at double precision)`` with an absolute expiry (seconds since the
epoch, on the caller's clock, injected as ``now``). One statement decides,
atomically (attacks "Atomicity and multiple instances")::

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
(attacks SEC-76). Connect and statement time-outs are bounded; any database
error raises :class:`~dpopkit.errors.ReplayStoreError` (fail closed, SEC-80)
and the next call reconnects.

The psycopg package is imported only by this module (``pip install dpopkit[postgres]``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from dpopkit.errors import ReplayStoreError, requires_extra

with requires_extra("postgres", needed_by=__name__):
    import psycopg
    import psycopg.errors
    from psycopg import sql

__all__ = ["AsyncPostgresReplayCache", "PostgresReplayCache"]


# CREATE ... IF NOT EXISTS run by two sessions at once can still collide in the catalog.
_CREATE_RACES = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject)

#: Seconds allowed to establish a connection (libpq rounds up to at least 2).
DEFAULT_CONNECT_TIMEOUT = 2
#: Milliseconds a statement (or a lock wait) may take on the server.
DEFAULT_STATEMENT_TIMEOUT_MS = 1000


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


class PostgresReplayCache:
    """A :class:`~dpopkit.ReplayCache` in a PostgreSQL table, shared by hosts.

    One connection, used under a lock (thread-safe), opened lazily and reopened
    after an error.

    Args:
        dsn: a libpq connection string or URL.
        schema: the schema holding the table (created if missing); None uses the
            search path.
        table: the table name.
        create_table: create the schema, table and index on first use.
        connect_timeout: seconds to establish a connection.
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
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        self.dsn = dsn
        self._sql = _Statements(schema, table)
        self._create_table = create_table
        self._kwargs = _conn_kwargs(connect_timeout, statement_timeout_ms)
        self._schedule = _Schedule(purge_interval, purge_grace)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn, **self._kwargs)
            try:
                if self._create_table:
                    for stmt in self._sql.create:
                        try:
                            conn.execute(stmt)
                        except _CREATE_RACES:  # another process created it meanwhile
                            conn.execute(stmt)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        An existing row whose ``expires_at`` is at or before ``now`` is replaced in
        the same statement, so an expired key is new again and a live one is not.

        Raises:
            ReplayStoreError: PostgreSQL failed or timed out; the caller refuses the request.
        """
        with self._lock:
            if self._schedule.due(now):
                self._purge_locked(now)  # a store that cannot purge cannot answer either
            try:
                # RFC 9449 §11.1: one atomic statement decides (attacks "Atomicity")
                row = (
                    self._connection()
                    .execute(self._sql.upsert, (key, float(expires_at), float(now)))
                    .fetchone()
                )
            except psycopg.Error as exc:
                self._drop()
                raise _store_error(exc) from exc
            return row is not None

    def _purge_locked(self, now: float) -> int:
        self._schedule.last = now
        try:
            cur = self._connection().execute(self._sql.purge, (now - self._schedule.grace,))
        except psycopg.Error as exc:
            self._drop()
            raise _store_error(exc) from exc
        return cur.rowcount

    def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many.

        Raises:
            ReplayStoreError: PostgreSQL failed.
        """
        with self._lock:
            return self._purge_locked(now)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()


class AsyncPostgresReplayCache:
    """The asyncio :class:`~dpopkit.AsyncReplayCache` over ``psycopg.AsyncConnection``.

    psycopg's async connections run on asyncio only; under trio use
    :class:`PostgresReplayCache` in a worker thread. Arguments as
    :class:`PostgresReplayCache`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        table: str = "dpopkit_replay",
        create_table: bool = True,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        purge_interval: float = 60.0,
        purge_grace: float = 300.0,
    ) -> None:
        self.dsn = dsn
        self._sql = _Statements(schema, table)
        self._create_table = create_table
        self._kwargs = _conn_kwargs(connect_timeout, statement_timeout_ms)
        self._schedule = _Schedule(purge_interval, purge_grace)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.dsn, **self._kwargs)
            try:
                if self._create_table:
                    for stmt in self._sql.create:
                        try:
                            await conn.execute(stmt)
                        except _CREATE_RACES:
                            await conn.execute(stmt)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        Raises:
            ReplayStoreError: PostgreSQL failed or timed out; the caller refuses the request.
        """
        async with self._get_lock():
            if self._schedule.due(now):
                await self._purge_locked(now)
            try:
                # RFC 9449 §11.1: one atomic statement decides (attacks "Atomicity")
                conn = await self._connection()
                cur = await conn.execute(self._sql.upsert, (key, float(expires_at), float(now)))
                row = await cur.fetchone()
            except psycopg.Error as exc:
                await self._drop()
                raise _store_error(exc) from exc
            return row is not None

    async def _purge_locked(self, now: float) -> int:
        self._schedule.last = now
        try:
            conn = await self._connection()
            cur = await conn.execute(self._sql.purge, (now - self._schedule.grace,))
        except psycopg.Error as exc:
            await self._drop()
            raise _store_error(exc) from exc
        return cur.rowcount

    async def purge(self, *, now: float) -> int:
        """Delete rows expired for more than ``purge_grace`` seconds; return how many.

        Raises:
            ReplayStoreError: PostgreSQL failed.
        """
        async with self._get_lock():
            return await self._purge_locked(now)

    async def aclose(self) -> None:
        """Close the connection."""
        async with self._get_lock():
            await self._drop()
