"""One-time artifacts under concurrency, on SQLite and on PostgreSQL (attacks family L, SEC-99).

One code redeemed by 20 parallel requests → exactly one token; one refresh token
presented 20 times in parallel → exactly one success and its family revoked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dpopkit import ResponseView
from dpopkit.storage.sql import SQLGrantStore

from .conftest import (
    AS,
    Clock,
    body_of,
    code_params,
    error_of,
    form_request,
    get_code,
    make_service,
)

PARALLEL = 20


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_store(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[SQLGrantStore]:
    if request.param == "sqlite":
        store = SQLGrantStore(sqlite_url)
        yield store
        store.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    prefix = request.getfixturevalue("unique_prefix")
    store = SQLGrantStore(dsn, table_prefix=f"{prefix}_")
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


@pytest.fixture
def server(backend_store: SQLGrantStore, clock: Clock) -> AS:
    return AS(make_service(backend_store, clock), backend_store, clock)


def _race(calls: list[Callable[[], ResponseView]]) -> list[ResponseView]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], ResponseView]) -> ResponseView:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _token_call(server: AS, params: dict[str, Any], proof: str) -> Callable[[], ResponseView]:
    request = form_request(
        server.service.settings.token_endpoint, params, headers=[("DPoP", proof)]
    )
    return lambda: server.service.handle_token(request)


def test_code_redeemed_in_parallel_yields_one_token(server: AS) -> None:
    """RFC 6749 §4.1.2: 20 parallel redemptions of one code → one 200, others invalid_grant."""
    code, verifier = get_code(server, dpop_jkt=server.key.jkt)
    params = code_params(code, verifier)
    responses = _race([_token_call(server, params, server.proof()) for _ in range(PARALLEL)])
    ok = [r for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    assert server.store.count_access_tokens() == 1


def test_refresh_presented_in_parallel_one_success_family_revoked(server: AS) -> None:
    """RFC 9700 §4.14.2: 20 parallel uses of one refresh token → one success, family revoked."""
    code, verifier = get_code(server)
    tokens = body_of(server.token(code_params(code, verifier), client=None))
    params = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "public",
    }
    responses = _race([_token_call(server, params, server.proof()) for _ in range(PARALLEL)])
    ok = [body_of(r) for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    # The reuse revoked the whole family: the winner's tokens are dead too.
    now = server.clock.now
    assert server.service.lookup_access_token(ok[0]["access_token"], now=now) is None
    again = server.token({**params, "refresh_token": ok[0]["refresh_token"]}, client=None)
    assert error_of(again) == "invalid_grant"


def test_schema_is_versioned(backend_store: SQLGrantStore) -> None:
    """The schema records its version and re-opening the store is idempotent."""
    assert backend_store.schema_version() == 1
    backend_store.create_schema()
    assert backend_store.schema_version() == 1
