"""One contract suite for every replay-cache backend.

Every backend, sync and async, must: answer True once then False (RFC 9449
§11.1); keep keys independent; honour the absolute expiry; let exactly one of
many concurrent presenters win, across threads and across OS processes; and
raise ``ReplayStoreError`` quickly when the store is down (SEC-80).

Clocks. memory, SQLite and PostgreSQL judge expiry on the caller's injected
``now``; Redis judges it on the server's clock (``PXAT``), so its cases use the
real time as their base and a short real wait for the expiry test.

Backward clock steps (SEC-76). What each backend can guarantee:

* every backend: a key that has not been purged stays live until its absolute
  expiry, whatever ``now`` a later call passes (stepping back never revives it);
* SQLite and PostgreSQL purge a row only ``purge_grace`` (default 300 s) after its
  expiry, so a forward jump past the expiry followed by a step back still finds
  the key; beyond the grace it is gone (asserted, to pin the documented bound);
* Redis never sees the verifier's clock: only the server's clock expires keys;
* memory, like them, forgets an entry only ``purge_grace`` (default 300 s) after its
  expiry (sooner only when the table is full).

Async backends run on asyncio and trio where the library allows: redis.asyncio and
psycopg's async connection are asyncio-only (under trio, use the sync class in a
worker thread), SQLite's async class runs in worker threads via anyio.
"""

from __future__ import annotations

import inspect
import multiprocessing
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import redis
from psycopg import sql

from dpopkit import DPoPKey
from dpopkit.core.proof import create_proof, verify_proof
from dpopkit.core.replay import AsyncReplayCache, ReplayCache, arecord_proof, record_proof
from dpopkit.errors import InvalidProofError, Reason, ReplayStoreError, SecurityWarning
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from dpopkit.storage.postgres import AsyncPostgresReplayCache, PostgresReplayCache
from dpopkit.storage.redis import (
    AsyncRedisReplayCache,
    RedisReplayCache,
    eviction_policy_is_risky,
)
from dpopkit.storage.sqlite import AsyncSQLiteReplayCache, SQLiteReplayCache
from tests.conftest import delete_redis_prefix, missing_real_part

NOW = 1_700_000_000.0
TTL = 60.0


@dataclass(frozen=True)
class Case:
    """One backend variant on one event loop."""

    kind: str  # memory | sqlite | redis | postgres
    is_async: bool
    loop: str  # the anyio backend the test body runs on

    @property
    def id(self) -> str:
        return f"{self.kind}-{'async' if self.is_async else 'sync'}-{self.loop}"

    @property
    def server_clock(self) -> bool:
        return self.kind == "redis"

    def marks(self) -> list[pytest.MarkDecorator]:
        if self.kind == "redis":
            return [pytest.mark.redis]
        if self.kind == "postgres":
            return [pytest.mark.postgres]
        return []


CASES = [
    Case("memory", False, "asyncio"),
    Case("memory", True, "asyncio"),
    Case("memory", True, "trio"),
    Case("sqlite", False, "asyncio"),
    Case("sqlite", True, "asyncio"),
    Case("sqlite", True, "trio"),
    Case("redis", False, "asyncio"),
    Case("redis", True, "asyncio"),
    Case("postgres", False, "asyncio"),
    Case("postgres", True, "asyncio"),
]
SQL_CASES = [c for c in CASES if c.kind in {"sqlite", "postgres"}]


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id, marks=c.marks()) for c in cases]


class Store:
    """A sync or async cache behind one awaitable interface, plus its clock base."""

    def __init__(self, case: Case, cache: ReplayCache | AsyncReplayCache) -> None:
        self.case = case
        self.cache = cache

    def t0(self) -> float:
        """The base instant of a test: injected for most backends, real for Redis."""
        return time.time() if self.case.server_clock else NOW

    async def cas(self, key: str, expires_at: float, *, now: float) -> bool:
        # both protocols are runtime_checkable by method name only: dispatch on the case
        result = self.cache.check_and_store(key, expires_at, now=now)
        if self.case.is_async:
            assert inspect.isawaitable(result)
            result = await result
        assert isinstance(result, bool)
        return result

    async def purge(self, *, now: float) -> int:
        cache = self.cache
        if isinstance(cache, AsyncSQLiteReplayCache | AsyncPostgresReplayCache):
            return await cache.purge(now=now)
        assert isinstance(cache, SQLiteReplayCache | PostgresReplayCache)
        return cache.purge(now=now)


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _close(cache: object) -> None:
    if isinstance(cache, AsyncRedisReplayCache | AsyncPostgresReplayCache):
        await cache.aclose()
    elif isinstance(
        cache,
        SQLiteReplayCache | AsyncSQLiteReplayCache | RedisReplayCache | PostgresReplayCache,
    ):
        cache.close()


def _make(case: Case, request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Any:
    if case.kind == "memory":
        return AsyncMemoryReplayCache() if case.is_async else MemoryReplayCache()
    if case.kind == "sqlite":
        path = tmp_path / "replay.db"
        return AsyncSQLiteReplayCache(path) if case.is_async else SQLiteReplayCache(path)
    if case.kind == "redis":
        url = request.getfixturevalue("redis_url")
        cls = AsyncRedisReplayCache if case.is_async else RedisReplayCache
        return cls.from_url(url, prefix=f"{prefix}:")
    dsn = request.getfixturevalue("pg_dsn")
    pg_cls = AsyncPostgresReplayCache if case.is_async else PostgresReplayCache
    return pg_cls(dsn, schema=prefix)


def _cleanup(case: Case, request: pytest.FixtureRequest, prefix: str) -> None:
    if case.kind == "redis":
        delete_redis_prefix(request.getfixturevalue("redis_url"), f"{prefix}:")
    elif case.kind == "postgres":
        _drop_schema(request.getfixturevalue("pg_dsn"), prefix)


@pytest.fixture(params=_params(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


@pytest.fixture
def anyio_backend(case: Case) -> str:
    return case.loop


@pytest.fixture
async def store(
    case: Case,
    anyio_backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    unique_prefix: str,
) -> AsyncIterator[Store]:
    cache = _make(case, request, tmp_path, unique_prefix)
    try:
        yield Store(case, cache)
    finally:
        await _close(cache)
        _cleanup(case, request, unique_prefix)


def _key() -> str:
    return f"dpopkit:jti:{uuid.uuid4().hex}"


# -- the contract -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_replay_first_true_then_false(store: Store) -> None:
    """RFC 9449 §11.1: a jti is accepted once; every later presentation is a replay."""
    t, key = store.t0(), _key()
    assert await store.cas(key, t + TTL, now=t) is True
    assert await store.cas(key, t + TTL, now=t) is False
    assert await store.cas(key, t + TTL, now=t + 1) is False


@pytest.mark.anyio
async def test_replay_keys_independent(store: Store) -> None:
    """Storing one key says nothing about another."""
    t = store.t0()
    a, b = _key(), _key()
    assert await store.cas(a, t + TTL, now=t) is True
    assert await store.cas(b, t + TTL, now=t) is True
    assert await store.cas(a, t + TTL, now=t) is False
    assert await store.cas(b, t + TTL, now=t) is False


@pytest.mark.anyio
async def test_replay_expiry_honoured_then_key_reusable(store: Store) -> None:
    """The absolute expiry ends the entry: live before it, new again at and after it."""
    key = _key()
    if store.case.server_clock:
        # Redis expires on its own clock: a short absolute expiry and a bounded real wait.
        t = store.t0()
        assert await store.cas(key, t + 0.3, now=t) is True
        assert await store.cas(key, t + 0.3, now=t) is False
        deadline = time.monotonic() + 5.0
        while not await store.cas(key, time.time() + TTL, now=time.time()):
            assert time.monotonic() < deadline, "Redis did not expire the key"
            await anyio.sleep(0.05)
        assert await store.cas(key, time.time() + TTL, now=time.time()) is False
        return
    t = NOW
    assert await store.cas(key, t + TTL, now=t) is True
    assert await store.cas(key, t + TTL, now=t + TTL - 0.001) is False
    assert await store.cas(key, t + 2 * TTL, now=t + TTL) is True  # expired: reusable
    assert await store.cas(key, t + 2 * TTL, now=t + TTL + 1) is False  # and live again


@pytest.mark.anyio
@pytest.mark.parametrize("case", _params(SQL_CASES), indirect=True)
async def test_replay_purge_removes_expired_rows_then_key_reusable(store: Store) -> None:
    """An explicit purge drops rows past expiry + grace; live rows survive it (SQL backends)."""
    t = NOW
    old, live = _key(), _key()
    assert await store.cas(old, t + TTL, now=t) is True
    assert await store.cas(live, t + 1000 * TTL, now=t) is True
    removed = await store.purge(now=t + TTL + 300.0)  # default purge_grace
    assert removed == 1
    assert await store.cas(old, t + 2000 * TTL, now=t + 1) is True  # row gone: new again
    assert await store.cas(live, t + 2000 * TTL, now=t + 1) is False


@pytest.mark.anyio
async def test_replay_already_expired_entry_is_not_kept(store: Store) -> None:
    """An ``expires_at`` already past is handled sanely: no error, the key is never live."""
    t, key = store.t0(), _key()
    assert await store.cas(key, t - 10.0, now=t) is True
    assert await store.cas(key, t - 10.0, now=t) is True
    assert await store.cas(key, t + TTL, now=t) is True
    assert await store.cas(key, t + TTL, now=t) is False


@pytest.mark.anyio
async def test_sec76_backward_clock_step_never_revives_live_key(store: Store) -> None:
    """SEC-76: stepping the clock back inside the window (no purge past expiry) is a replay."""
    t, key = store.t0(), _key()
    assert await store.cas(key, t + TTL, now=t) is True
    assert await store.cas(_key(), t + TTL + 30, now=t + 30) is True  # clock moves on
    assert await store.cas(key, t + TTL, now=t + 5) is False  # steps back
    assert await store.cas(key, t + TTL, now=t - 30) is False  # steps back before t


@pytest.mark.anyio
async def test_sec76_forward_jump_past_expiry_then_back(store: Store) -> None:
    """SEC-76: the clock jumps past the expiry (purge runs), then steps back inside the window.

    Memory, SQLite and PostgreSQL keep entries ``purge_grace`` past expiry and Redis
    ignores the verifier's clock: the replay is refused. Beyond the grace the key is
    forgotten (the documented bound).
    """
    t, key = store.t0(), _key()
    assert await store.cas(key, t + TTL, now=t) is True
    jumped = t + 2 * TTL
    assert await store.cas(_key(), jumped + TTL, now=jumped) is True  # triggers purges
    if store.case.kind in {"sqlite", "postgres"}:
        await store.purge(now=jumped)
    assert await store.cas(key, t + TTL, now=t + 10) is False
    if store.case.kind in {"memory", "sqlite", "postgres"}:
        key2 = _key()
        assert await store.cas(key2, t + TTL, now=t) is True
        past_grace = t + TTL + 300.0 + 1
        if store.case.kind == "memory":
            assert await store.cas(_key(), past_grace + TTL, now=past_grace) is True  # purges
        else:
            await store.purge(now=past_grace)
        assert await store.cas(key2, t + TTL, now=t + 10) is True


@pytest.mark.anyio
async def test_replay_50_concurrent_presenters_one_winner(store: Store) -> None:
    """SEC-74/75: 50 concurrent presenters of each of 10 keys → one True per key."""
    t, keys = store.t0(), [_key() for _ in range(10)]
    n = 50
    if store.case.is_async:
        won: list[str] = []

        async def one() -> None:
            for k in keys:
                if await store.cas(k, t + TTL, now=t):
                    won.append(k)

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    else:
        cache = store.cache
        assert isinstance(cache, ReplayCache)
        barrier = threading.Barrier(n)

        def run() -> list[str]:
            barrier.wait(timeout=10)
            return [k for k in keys if cache.check_and_store(k, t + TTL, now=t)]

        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(run) for _ in range(n)]
            won = [k for f in futures for k in f.result(timeout=30)]
    assert sorted(won) == sorted(keys)  # every key won exactly once


@pytest.mark.postgres
def test_replay_50_concurrent_presenters_over_10_postgres_connections(
    pg_dsn: str, unique_prefix: str
) -> None:
    """SEC-74/75: races decided by PostgreSQL itself (10 sessions, 50 threads, 20 keys).

    Ten caches (each with its own connection pool) make the database arbitrate between
    concurrent sessions.
    """
    caches = [PostgresReplayCache(pg_dsn, schema=unique_prefix) for _ in range(10)]
    n, keys = 50, [_key() for _ in range(20)]
    barrier = threading.Barrier(n)
    try:
        assert caches[0].check_and_store(_key(), NOW + TTL, now=NOW) is True  # DDL first

        def run(i: int) -> list[str]:
            cache = caches[i % len(caches)]
            barrier.wait(timeout=10)
            return [k for k in keys if cache.check_and_store(k, NOW + TTL, now=NOW)]

        with ThreadPoolExecutor(max_workers=n) as pool:
            won = [f.result(timeout=30) for f in [pool.submit(run, i) for i in range(n)]]
    finally:
        for cache in caches:
            cache.close()
        _drop_schema(pg_dsn, unique_prefix)
    assert sorted(k for w in won for k in w) == sorted(keys)  # one winner per key


@pytest.mark.postgres
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_replay_50_concurrent_tasks_over_5_async_postgres_connections(
    pg_dsn: str, unique_prefix: str
) -> None:
    """SEC-74/75: 50 tasks over five async sessions → exactly one True."""
    caches = [AsyncPostgresReplayCache(pg_dsn, schema=unique_prefix) for _ in range(5)]
    key = _key()
    results: list[bool] = []
    try:
        assert await caches[0].check_and_store(_key(), NOW + TTL, now=NOW) is True

        async def one(i: int) -> None:
            cache = caches[i % len(caches)]
            results.append(await cache.check_and_store(key, NOW + TTL, now=NOW))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    finally:
        for cache in caches:
            await cache.aclose()
        _drop_schema(pg_dsn, unique_prefix)
    assert len(results) == 50
    assert results.count(True) == 1


# -- several OS processes -----------------------------------------------------------------


def _mp_params(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, prefix: str
) -> dict[str, Any]:
    if kind == "sqlite":
        return {"path": str(tmp_path / "replay.db")}
    if kind == "redis":
        return {"url": request.getfixturevalue("redis_url"), "prefix": f"{prefix}:"}
    return {"dsn": request.getfixturevalue("pg_dsn"), "schema": prefix}


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_replay_two_processes_one_winner_per_key(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_prefix: str
) -> None:
    """SEC-74/75: two OS processes hammer the same keys.

    Each key is won by exactly one process (the union is every key, no key twice).
    """
    from tests.storage import _replay_worker

    params = _mp_params(kind, request, tmp_path, unique_prefix)
    # create the table/schema first so both processes measure the insert race, not DDL
    first = _replay_worker.build(kind, params)
    base = time.time() if kind == "redis" else NOW
    try:
        assert first.check_and_store(_key(), base + TTL, now=base) is True
    finally:
        first.close()
    keys = [_key() for _ in range(300)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_replay_worker.hammer, args=(kind, params, keys, base, barrier, out))
        for _ in range(2)
    ]
    try:
        for p in procs:
            p.start()
        won = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        out.close()
        out.join_thread()
        _cleanup(Case(kind, False, "asyncio"), request, unique_prefix)
    assert all(isinstance(w, list) for w in won), won
    assert [p.exitcode for p in procs] == [0, 0]
    together = won[0] + won[1]
    assert sorted(together) == sorted(keys)  # every key exactly once


# -- the store is down: fail closed, fast ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


async def _assert_fails_closed(cache: object, bound: float) -> None:
    is_async = isinstance(cache, AsyncRedisReplayCache | AsyncPostgresReplayCache)
    store = Store(Case("down", is_async, "asyncio"), cache)  # type: ignore[arg-type]
    start = time.monotonic()
    try:
        with pytest.raises(ReplayStoreError) as info:
            await store.cas(_key(), time.time() + TTL, now=time.time())
    finally:
        await _close(cache)
    assert time.monotonic() - start < bound
    assert info.value.reason is Reason.STORE_UNAVAILABLE
    assert info.value.status_code == 503


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sec80_redis_closed_port_fails_closed_fast(is_async: bool) -> None:
    """SEC-80: Redis connection refused → ReplayStoreError well within the time-out."""
    url = f"redis://127.0.0.1:{_free_port()}/0"
    cls = AsyncRedisReplayCache if is_async else RedisReplayCache
    await _assert_fails_closed(cls.from_url(url), bound=1.0)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sec80_redis_silent_server_bounded_latency(is_async: bool, silent_port: int) -> None:
    """SEC-80: a Redis that never answers → ReplayStoreError after about one time-out."""
    url = f"redis://127.0.0.1:{silent_port}/0"
    cls = AsyncRedisReplayCache if is_async else RedisReplayCache
    await _assert_fails_closed(cls.from_url(url, timeout=0.3), bound=1.5)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sec80_postgres_closed_port_fails_closed_fast(is_async: bool) -> None:
    """SEC-80: PostgreSQL connection refused → ReplayStoreError at once."""
    dsn = f"postgresql://postgres@127.0.0.1:{_free_port()}/test"
    cls = AsyncPostgresReplayCache if is_async else PostgresReplayCache
    await _assert_fails_closed(cls(dsn), bound=1.0)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sec80_postgres_silent_server_bounded_latency(
    is_async: bool, silent_port: int
) -> None:
    """SEC-80: a PostgreSQL that never answers → ReplayStoreError after connect_timeout."""
    dsn = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    cls = AsyncPostgresReplayCache if is_async else PostgresReplayCache
    await _assert_fails_closed(cls(dsn, connect_timeout=2), bound=3.5)


@pytest.mark.postgres
def test_sec80_postgres_lock_wait_bounded(pg_dsn: str, unique_prefix: str) -> None:
    """SEC-80: a row held by another transaction → ReplayStoreError after the lock time-out."""
    cache = PostgresReplayCache(pg_dsn, schema=unique_prefix, statement_timeout_ms=200)
    key = _key()
    try:
        assert cache.check_and_store(_key(), NOW + TTL, now=NOW) is True  # creates the table
        with psycopg.connect(pg_dsn) as holder:  # a transaction left open
            table = sql.Identifier(unique_prefix, "dpopkit_replay")
            holder.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table), (key, NOW + TTL)
            )
            start = time.monotonic()
            with pytest.raises(ReplayStoreError) as info:
                cache.check_and_store(key, NOW + TTL, now=NOW)
            assert time.monotonic() - start < 1.5
            assert info.value.reason is Reason.STORE_UNAVAILABLE
            holder.rollback()
        assert cache.check_and_store(key, NOW + TTL, now=NOW) is True  # recovered
    finally:
        cache.close()
        _drop_schema(pg_dsn, unique_prefix)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sec80_sqlite_unwritable_path_fails_closed_then_recovers(
    is_async: bool, tmp_path: Path
) -> None:
    """SEC-80: a database that cannot be opened → ReplayStoreError; works once it can."""
    missing = tmp_path / "missing-dir"
    path = missing / "replay.db"
    cache = AsyncSQLiteReplayCache(path) if is_async else SQLiteReplayCache(path)
    store = Store(Case("sqlite", is_async, "asyncio"), cache)
    try:
        start = time.monotonic()
        with pytest.raises(ReplayStoreError) as info:
            await store.cas(_key(), NOW + TTL, now=NOW)
        assert time.monotonic() - start < 1.0
        assert info.value.reason is Reason.STORE_UNAVAILABLE
        missing.mkdir()
        assert await store.cas(_key(), NOW + TTL, now=NOW) is True
    finally:
        await _close(cache)


def test_sec80_sqlite_locked_database_bounded_retries_then_fails_closed(tmp_path: Path) -> None:
    """SEC-80: ``database is locked`` → bounded retries, then ReplayStoreError; then recovery."""
    path = tmp_path / "replay.db"
    cache = SQLiteReplayCache(path, busy_timeout=0.1, retries=2)
    try:
        assert cache.check_and_store(_key(), NOW + TTL, now=NOW) is True
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # takes the write lock and keeps it
            start = time.monotonic()
            with pytest.raises(ReplayStoreError) as info:
                cache.check_and_store(_key(), NOW + TTL, now=NOW)
            elapsed = time.monotonic() - start
            assert 0.25 < elapsed < 1.5  # three bounded waits, not a hang
            assert info.value.reason is Reason.STORE_UNAVAILABLE
            assert info.value.detail["locked"] is True
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert cache.check_and_store(_key(), NOW + TTL, now=NOW) is True
    finally:
        cache.close()


def test_sec107_memory_full_refuses_instead_of_evicting() -> None:
    """SEC-107/108: the bounded memory backend refuses when full; it never evicts a live key."""
    cache = MemoryReplayCache(max_entries=2)
    a = _key()
    assert cache.check_and_store(a, NOW + TTL, now=NOW) is True
    assert cache.check_and_store(_key(), NOW + TTL, now=NOW) is True
    with pytest.raises(ReplayStoreError) as info:
        cache.check_and_store(_key(), NOW + TTL, now=NOW)
    assert info.value.reason is Reason.STORE_FULL
    assert cache.check_and_store(a, NOW + TTL, now=NOW) is False


# -- Redis eviction policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "risky"),
    [
        ("noeviction", False),
        ("volatile-lru", True),
        ("volatile-lfu", True),
        ("volatile-random", True),
        ("volatile-ttl", True),
        ("allkeys-lru", True),
        ("allkeys-lfu", True),
        ("allkeys-random", True),
        ("", False),
    ],
)
def test_redis_eviction_policy_check(policy: str, risky: bool) -> None:
    """SEC-108: volatile-* and allkeys-* can evict live replay keys."""
    assert eviction_policy_is_risky(policy) is risky


def _redis_server(binary: str, port: int, policy: str) -> subprocess.Popen[bytes]:
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--maxmemory-policy", policy]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def throwaway_redis() -> Iterator[Callable[[str], str]]:
    """Start private redis-server processes on free ports (never the shared server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_real_part("redis-server binary not found (a throwaway Redis needs one)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(policy: str) -> str:
        port = _free_port()
        proc = _redis_server(binary, port, policy)
        procs.append(proc)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()
        return url

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.redis
def test_redis_volatile_policy_warns_once(throwaway_redis: Callable[[str], str]) -> None:
    """SEC-108: a volatile-* Redis gets one SecurityWarning, then works."""
    cache = RedisReplayCache.from_url(throwaway_redis("volatile-lru"))
    try:
        now = time.time()
        with pytest.warns(SecurityWarning):
            assert cache.check_and_store(_key(), now + TTL, now=now) is True
        assert cache.check_and_store(_key(), now + TTL, now=now) is True  # no second warning
    finally:
        cache.close()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_async_allkeys_policy_warns(throwaway_redis: Callable[[str], str]) -> None:
    """SEC-108: the async cache checks the policy too."""
    cache = AsyncRedisReplayCache.from_url(throwaway_redis("allkeys-lru"))
    try:
        now = time.time()
        with pytest.warns(SecurityWarning):
            assert await cache.check_and_store(_key(), now + TTL, now=now) is True
    finally:
        await cache.aclose()


@pytest.mark.redis
def test_redis_noeviction_policy_no_warning_clock_skew_warns(redis_url: str) -> None:
    """The shared test Redis runs noeviction (no warning: warnings are errors here); a
    zero clock-skew tolerance makes the first-use clock check warn."""
    quiet = RedisReplayCache.from_url(redis_url)
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    strict = RedisReplayCache(client, max_clock_skew=0.0)
    try:
        quiet.check_server()
        with pytest.warns(SecurityWarning):
            strict.check_server()
    finally:
        quiet.close()
        strict.close()


@pytest.mark.redis
def test_redis_check_server_false_skips_policy_check(
    throwaway_redis: Callable[[str], str],
) -> None:
    """``check_server=False`` (operator's choice) inspects nothing and warns about nothing."""
    cache = RedisReplayCache.from_url(throwaway_redis("volatile-ttl"), check_server=False)
    try:
        now = time.time()
        assert cache.check_and_store(_key(), now + TTL, now=now) is True
    finally:
        cache.close()


@pytest.mark.redis
def test_sec80_redis_outage_then_recovery(throwaway_redis: Callable[[str], str]) -> None:
    """SEC-80: Redis stops → ReplayStoreError at once; it comes back → the same cache works."""
    url = throwaway_redis("noeviction")
    cache = RedisReplayCache.from_url(url)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        now = time.time()
        key = _key()
        assert cache.check_and_store(key, now + TTL, now=now) is True
        cache.client.shutdown(nosave=True)
        with pytest.raises(ReplayStoreError):
            cache.check_and_store(_key(), now + TTL, now=now)
        binary = shutil.which("redis-server")
        assert binary is not None
        proc = _redis_server(binary, port, "noeviction")
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert cache.check_and_store(key, now + TTL, now=now) is True
                    break
                except ReplayStoreError:
                    assert time.monotonic() < deadline, "no recovery"
                    time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        cache.close()


# -- through the core's record_proof --------------------------------------------------------


@pytest.mark.anyio
async def test_rfc9449_11_1_verified_proof_replayed_through_every_backend(
    store: Store, es256_key: DPoPKey
) -> None:
    """RFC 9449 §11.1: a verified proof recorded twice is REPLAYED_JTI on every backend."""
    t = store.t0()
    htu = "https://api.example/resource"
    proof = create_proof(es256_key, htm="GET", htu=htu, now=t)
    verified = verify_proof(proof, htm="GET", htu=htu, now=t)
    assert verified.replay_expires_at > t
    cache = store.cache
    if store.case.is_async:
        assert isinstance(cache, AsyncReplayCache)
        await arecord_proof(cache, verified, now=t)
        with pytest.raises(InvalidProofError) as info:
            await arecord_proof(cache, verified, now=t + 1)
    else:
        assert isinstance(cache, ReplayCache)
        record_proof(cache, verified, now=t)
        with pytest.raises(InvalidProofError) as info:
            record_proof(cache, verified, now=t + 1)
    assert info.value.reason is Reason.REPLAYED_JTI
    assert info.value.error == "invalid_dpop_proof"
