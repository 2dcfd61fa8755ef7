"""A store that keeps its connections open but stops answering gives 503 within the timeout.

Every network store sits behind a :class:`~tests.storage.freeze_proxy.FreezeProxy`
(a real PostgreSQL or Redis behind it). After a warm-up the proxy freezes: the
connections stay open and nothing comes back, as with a frozen server or a
stalled proxy or pooler. Then:

* each of several concurrent requests is refused with 503 within the store's
  timeout plus a margin smaller than that timeout, so none waited for another
  (one stuck operation would have queued the rest behind it);
* after the proxy thaws, requests succeed again.

This runs for the resource server (WSGI + sync cache, ASGI + async cache, over
PostgreSQL and Redis) and for the authorization server's token endpoint (its
ASGI app over a PostgreSQL grant store).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psycopg
import pytest
import redis
import redis.asyncio

from dpopkit import DPoPKey, create_proof
from dpopkit.errors import Reason, ReplayStoreError
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.config import ConfigError, build_server, load_config
from dpopkit.storage.postgres import AsyncPostgresReplayCache, PostgresReplayCache
from dpopkit.storage.redis import AsyncRedisReplayCache, RedisReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, StoreError
from tests.conftest import delete_redis_prefix
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    ORIGIN,
    Calls,
    Clock,
    Issuer,
    asgi_app,
    dpop_headers,
    wsgi_app,
)
from tests.server.conftest import SECRET, TOKEN_URL, USERS, basic, make_service
from tests.server.conftest import Clock as ASClock
from tests.storage.freeze_proxy import FreezeProxy, frozen_proxy

pytestmark = pytest.mark.anyio

#: The store timeout the stacks are built with (the PostgreSQL default; Redis is set to it).
TIMEOUT = 2.0
#: Scheduling slack on a busy machine; below TIMEOUT, so a queued request cannot pass.
MARGIN = 1.5
#: Concurrent requests while frozen.
PARALLEL = 3
#: How long the store stays frozen at most (it thaws earlier once every request is answered).
OUTAGE = 3 * TIMEOUT + MARGIN
#: No test may run longer than this, whatever happens.
TEST_BOUND = 60.0

Send = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Stack:
    """One server over a store behind the proxy: ``request()`` makes a fresh, valid request."""

    proxy: FreezeProxy
    request: Callable[[], Awaitable[httpx.Response]]
    ok: int  # the status of a request the store can answer
    store: str = "replay"  # the name its outage is logged under


async def _timed(send: Send) -> tuple[int, float]:
    start = time.monotonic()
    response = await send()
    return response.status_code, time.monotonic() - start


async def _concurrently(stack: Stack, n: int) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []

    async def one() -> None:
        results.append(await _timed(stack.request))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


async def _freeze_then_thaw(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """The scenario shared by every stack (see the module docstring).

    HD-25: the outage is logged once when it starts and once when it ends, on the
    ``dpopkit.storage`` logger, whatever the number of refused requests.
    """
    caplog.set_level(logging.WARNING, logger="dpopkit.storage")
    with anyio.fail_after(TEST_BOUND):
        warm = await _concurrently(stack, PARALLEL)  # opens (pools) connections
        assert [status for status, _ in warm] == [stack.ok] * PARALLEL

        # A client that never gives up is released when the outage ends (and then fails the
        # bound below), so the test ends either way.
        stack.proxy.freeze(thaw_after=OUTAGE)
        start = time.monotonic()
        frozen = await _concurrently(stack, PARALLEL)
        wall = time.monotonic() - start
        assert [status for status, _ in frozen] == [503] * PARALLEL
        assert max(elapsed for _, elapsed in frozen) < TIMEOUT + MARGIN, frozen
        assert wall < TIMEOUT + MARGIN  # concurrent, not one after the other

        stack.proxy.thaw()
        recovered = await _concurrently(stack, PARALLEL)
        assert [status for status, _ in recovered] == [stack.ok] * PARALLEL
    logged = [r.getMessage().split()[:3] for r in caplog.records if r.name == "dpopkit.storage"]
    store = f"store={stack.store}"
    assert logged == [["store", "unavailable", store], ["store", "recovered", store]]


# -- resource server ------------------------------------------------------------------------


def _rs_cache(kind: str, url: str, prefix: str, *, is_async: bool) -> Any:
    if kind == "postgres":
        cls = AsyncPostgresReplayCache if is_async else PostgresReplayCache
        return cls(url, schema=prefix, timeout=TIMEOUT)
    rcls = AsyncRedisReplayCache if is_async else RedisReplayCache
    return rcls.from_url(url, prefix=f"{prefix}:", timeout=TIMEOUT)


@asynccontextmanager
async def _rs_stack(kind: str, url: str, prefix: str, *, is_async: bool) -> AsyncIterator[Stack]:
    issuer, clock = Issuer(), Clock(time.time())
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    key = DPoPKey.generate("ES256")
    token = issuer.token(jkt=key.jkt, now=clock.now)
    default_port = 5432 if kind == "postgres" else 6379
    with frozen_proxy(url, default_port) as (proxy, proxied):
        cache = _rs_cache(kind, proxied, prefix, is_async=is_async)
        calls = Calls()
        try:
            if is_async:
                app = DPoPMiddleware(
                    asgi_app(calls),
                    guard=AsyncResourceGuard(tokens=tokens, replay=cache, clock=clock),
                    public_origin=ORIGIN,
                )
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:

                    async def via_asgi() -> httpx.Response:
                        return await client.get(
                            "/hello", headers=dpop_headers(key, token, now=clock.now)
                        )

                    yield Stack(proxy, via_asgi, 200)
            else:
                wsgi = DPoPWSGIMiddleware(
                    wsgi_app(calls),
                    guard=ResourceGuard(tokens=tokens, replay=cache, clock=clock),
                    public_origin=ORIGIN,
                )

                def one_request() -> httpx.Response:  # a worker thread, as a WSGI server has
                    transport = httpx.WSGITransport(app=wsgi)
                    with httpx.Client(transport=transport, base_url=ORIGIN) as client:
                        return client.get("/hello", headers=dpop_headers(key, token, now=clock.now))

                async def via_wsgi() -> httpx.Response:
                    return await anyio.to_thread.run_sync(one_request)

                yield Stack(proxy, via_wsgi, 200)
        finally:
            close = getattr(cache, "aclose", None)
            if close is not None:
                await close()
            else:
                cache.close()


@pytest.fixture
def cleanup(request: pytest.FixtureRequest, unique_prefix: str) -> Iterator[None]:
    yield
    if "pg_dsn" in request.fixturenames:
        with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{unique_prefix}" CASCADE')
    if "redis_url" in request.fixturenames:
        delete_redis_prefix(request.getfixturevalue("redis_url"), f"{unique_prefix}:")


@pytest.mark.postgres
@pytest.mark.parametrize("is_async", [False, True], ids=["wsgi-sync", "asgi-async"])
async def test_hd19_rs_frozen_postgres_replay_store_gives_503_within_timeout(
    is_async: bool,
    pg_dsn: str,
    unique_prefix: str,
    cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HD-19: a frozen PostgreSQL replay store → 503 within its timeout for concurrent
    requests (none queued behind a stuck one), then recovery (RFC 9449 §11.1 fail closed)."""
    async with _rs_stack("postgres", pg_dsn, unique_prefix, is_async=is_async) as stack:
        await _freeze_then_thaw(stack, caplog)


@pytest.mark.redis
@pytest.mark.parametrize("is_async", [False, True], ids=["wsgi-sync", "asgi-async"])
async def test_hd19_rs_frozen_redis_replay_store_gives_503_within_timeout(
    is_async: bool,
    redis_url: str,
    unique_prefix: str,
    cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HD-19: a frozen Redis replay store → 503 within its timeout for concurrent requests,
    then recovery (RFC 9449 §11.1 fail closed)."""
    async with _rs_stack("redis", redis_url, unique_prefix, is_async=is_async) as stack:
        await _freeze_then_thaw(stack, caplog)


# -- authorization server -------------------------------------------------------------------


@pytest.mark.postgres
async def test_hd19_as_token_endpoint_frozen_postgres_grant_store_gives_503(
    pg_dsn: str, unique_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """HD-19: the token endpoint over a frozen PostgreSQL grant store answers 503
    ``temporarily_unavailable`` (RFC 6749 §5.2) within the store timeout for concurrent
    requests, then issues tokens again once the database answers. The tokens are opaque,
    so that each one is written to the grant store (a client_credentials JWT is not)."""
    prefix = f"{unique_prefix}_"
    with frozen_proxy(pg_dsn, 5432) as (proxy, proxied):
        store = SQLGrantStore(proxied, table_prefix=prefix, timeout=TIMEOUT)
        try:
            clock = ASClock(time.time())
            service = make_service(store, clock, access_token_format="opaque")
            app = create_app(service, authenticator=ConfigUsers(USERS))
            key = DPoPKey.generate("ES256")
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:

                async def token_request() -> httpx.Response:
                    proof = create_proof(
                        key, htm="POST", htu=TOKEN_URL, now=clock.now, allow_insecure_http=True
                    )
                    response = await client.post(
                        "/token",
                        data={"grant_type": "client_credentials"},
                        headers={"Authorization": basic("conf", SECRET), "DPoP": proof},
                    )
                    if response.status_code == 503:
                        assert response.json()["error"] == "temporarily_unavailable"
                    return response

                await _freeze_then_thaw(Stack(proxy, token_request, 200, "grant_store"), caplog)
        finally:
            store.close()
            direct = SQLGrantStore(pg_dsn, table_prefix=prefix, create=False)
            direct.drop_schema()
            direct.close()


# -- every store has a client-side deadline ---------------------------------------------------


@pytest.mark.parametrize("cls", [RedisReplayCache, AsyncRedisReplayCache])
async def test_hd19_redis_client_without_socket_timeout_is_refused(cls: Any) -> None:
    """HD-19: a Redis client with no socket time-out would wait for a frozen server forever,
    so the replay cache refuses it; one with a time-out is taken (nothing connects yet)."""
    module = redis.asyncio if cls is AsyncRedisReplayCache else redis
    with pytest.raises(ValueError):
        cls(module.Redis.from_url("redis://127.0.0.1:1/0"))
    client = module.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.5)
    cls(client)
    await client.aclose() if module is redis.asyncio else client.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda t: PostgresReplayCache("postgresql://127.0.0.1:1/x", timeout=t),
        lambda t: AsyncPostgresReplayCache("postgresql://127.0.0.1:1/x", timeout=t),
        lambda t: SQLGrantStore("postgresql://127.0.0.1:1/x", create=False, timeout=t),
    ],
    ids=["postgres-replay", "postgres-replay-async", "sql-grant-store"],
)
@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
def test_hd19_store_timeout_must_be_a_positive_bound(
    make: Callable[[float], object], seconds: float
) -> None:
    """HD-19: a store's timeout is a finite positive number of seconds; no way to turn the
    client-side deadline off."""
    with pytest.raises(ValueError):
        make(seconds)


@pytest.mark.parametrize("value", ["0", "-1", "61", "true", '"2"'])
def test_hd19_serve_store_timeout_is_validated(tmp_path: Path, value: str) -> None:
    """HD-19: ``store_timeout`` in the ``dpopkit serve`` TOML is a bounded number of seconds;
    anything else is a one-line configuration error."""
    path = tmp_path / "as.toml"
    path.write_text(f'issuer = "http://127.0.0.1:8000"\nstore_timeout = {value}\n')
    with pytest.raises(ConfigError):
        load_config(path, data_dir=tmp_path)


@pytest.mark.postgres
def test_hd19_serve_store_timeout_reaches_every_network_store(
    tmp_path: Path, pg_dsn: str, unique_prefix: str
) -> None:
    """HD-19: ``store_timeout`` configures the grant store and the PostgreSQL replay cache
    that ``dpopkit serve`` builds (nothing hard-wired)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{unique_prefix}"')
    # the grant store's tables go to this test's schema through the search path
    storage = f"{pg_dsn}?options=-csearch_path%3D{unique_prefix}"
    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://127.0.0.1:8000"\n'
        f'storage_url = "{storage}"\nreplay_url = "{pg_dsn}"\n'
        f'replay_schema = "{unique_prefix}"\nstore_timeout = 1.25\n'
    )
    try:
        config = load_config(path, data_dir=tmp_path)
        assert config.store_timeout == 1.25
        _, service = build_server(config)
        try:
            assert service.store.timeout == 1.25
            assert isinstance(service.replay, PostgresReplayCache)
            assert service.replay.timeout == 1.25
            assert service.store.count_access_tokens() == 0  # the store answers through it
        finally:
            service.store.close()
            if isinstance(service.replay, PostgresReplayCache):
                service.replay.close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{unique_prefix}" CASCADE')


@pytest.mark.postgres
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_hd19_postgres_pool_wait_shares_the_call_budget(
    is_async: bool,
    pg_dsn: str,
    unique_prefix: str,
    cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HD-19: with its only pooled connection stuck, a second call waits for the slot within
    its own budget and does not then open a connection to the frozen server (which would add
    ``connect_timeout``): each call fails closed (STORE_UNAVAILABLE) within the timeout, then
    the cache works again (RFC 9449 §11.1)."""
    timeout = 0.5
    with anyio.fail_after(TEST_BOUND), frozen_proxy(pg_dsn, 5432) as (proxy, proxied):
        kind = AsyncPostgresReplayCache if is_async else PostgresReplayCache
        cache: Any = kind(proxied, schema=unique_prefix, timeout=timeout, max_connections=1)
        now = time.time()

        async def call(key: str) -> bool:
            if is_async:
                return bool(await cache.check_and_store(key, now + 60, now=now))
            store = functools.partial(cache.check_and_store, key, now + 60, now=now)
            return bool(await anyio.to_thread.run_sync(store))

        results: list[tuple[str, float]] = []

        async def one(key: str, delay: float) -> None:
            await anyio.sleep(delay)
            start = time.monotonic()
            with pytest.raises(ReplayStoreError) as info:
                await call(key)
            assert info.value.reason is Reason.STORE_UNAVAILABLE
            results.append((key, time.monotonic() - start))

        try:
            assert await call("warm") is True  # the one pooled connection
            proxy.freeze(thaw_after=OUTAGE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "a", 0.0)  # takes the connection and is cut at the deadline
                tg.start_soon(one, "b", 0.2)  # waits for the slot, which comes back empty
            assert len(results) == 2
            assert max(elapsed for _, elapsed in results) < timeout + MARGIN, results
            proxy.thaw()
            assert await call("after") is True
            assert await call("after") is False  # a replay, answered by the store again
        finally:
            close = getattr(cache, "aclose", None)
            if close is not None:
                await close()
            else:
                cache.close()


@pytest.mark.postgres
async def test_hd19_grant_store_reads_and_writes_fail_closed_within_timeout(
    pg_dsn: str, unique_prefix: str
) -> None:
    """HD-19: every kind of grant-store operation (a read and a write transaction) raises
    StoreError within the timeout on a frozen PostgreSQL, concurrently, and works after."""
    prefix = f"{unique_prefix}_"
    client = ClientRecord(client_id="c1", token_endpoint_auth_method="none")
    with anyio.fail_after(TEST_BOUND), frozen_proxy(pg_dsn, 5432) as (proxy, proxied):
        store = SQLGrantStore(proxied, table_prefix=prefix, timeout=TIMEOUT)
        try:
            ops: list[Callable[[], object]] = [
                lambda: store.get_client("c1"),
                lambda: store.put_client(client),
                lambda: store.count_access_tokens(),
            ]
            for op in ops:  # each one works and leaves a pooled connection
                op()
            proxy.freeze(thaw_after=OUTAGE)
            outcomes: list[tuple[str, float]] = []

            async def run(op: Callable[[], object]) -> None:
                start = time.monotonic()
                try:
                    await anyio.to_thread.run_sync(op)
                except StoreError:
                    outcomes.append(("StoreError", time.monotonic() - start))
                else:
                    outcomes.append(("answered", time.monotonic() - start))

            async with anyio.create_task_group() as tg:
                for op in ops:
                    tg.start_soon(run, op)
            assert [kind for kind, _ in outcomes] == ["StoreError"] * len(ops)
            assert max(elapsed for _, elapsed in outcomes) < TIMEOUT + MARGIN, outcomes
            proxy.thaw()
            assert store.get_client("c1") == client
        finally:
            store.close()
            direct = SQLGrantStore(pg_dsn, table_prefix=prefix, create=False)
            direct.drop_schema()
            direct.close()
