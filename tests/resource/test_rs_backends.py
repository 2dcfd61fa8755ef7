"""The guard over every replay backend: SQLite (file) and PostgreSQL (real server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique_prefix: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'replay.db'}"
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    yield f"postgres:{dsn}"
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{unique_prefix}" CASCADE')


def _caches(spec: str, schema: str) -> tuple[Any, Any]:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        from dpopkit.storage.sqlite import AsyncSQLiteReplayCache, SQLiteReplayCache

        return SQLiteReplayCache(where), AsyncSQLiteReplayCache(where)
    from dpopkit.storage.postgres import AsyncPostgresReplayCache, PostgresReplayCache

    return PostgresReplayCache(where, schema=schema), AsyncPostgresReplayCache(where, schema=schema)


def test_sec75_replay_shared_through_backend_wsgi_and_asgi(
    backend: str, unique_prefix: str, issuer: Issuer
) -> None:
    """Two guards (a WSGI and an ASGI one, as two workers) share one store: a proof accepted
    by one is refused by the other, and by itself."""
    sync_cache, async_cache = _caches(backend, unique_prefix)
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    clock = Clock()
    wcalls, acalls = Calls(), Calls()
    wsgi = DPoPWSGIMiddleware(
        wsgi_app(wcalls),
        guard=ResourceGuard(tokens=tokens, replay=sync_cache, clock=clock),
        public_origin=ORIGIN,
    )
    asgi = DPoPMiddleware(
        asgi_app(acalls),
        guard=AsyncResourceGuard(tokens=tokens, replay=async_cache, clock=clock),
        public_origin=ORIGIN,
    )
    key = DPoPKey.generate("ES256")
    token = issuer.token(jkt=key.jkt)
    first, second = dpop_headers(key, token), dpop_headers(key, token)

    with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url=ORIGIN) as client:
        assert client.get("/hello", headers=first).status_code == 200
        assert client.get("/hello", headers=first).status_code == 401

    async def via_asgi() -> list[int]:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            statuses = [
                (await client.get("/hello", headers=first)).status_code,
                (await client.get("/hello", headers=second)).status_code,
                (await client.get("/hello", headers=second)).status_code,
            ]
        close = getattr(async_cache, "aclose", None)
        if close is not None:
            await close()
        return statuses

    assert anyio.run(via_asgi) == [401, 200, 401]
    assert (wcalls.count, acalls.count) == (1, 1)
    sync_cache.close()
