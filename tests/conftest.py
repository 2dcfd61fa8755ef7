"""Shared fixtures: a pinned clock, keys for every algorithm, and real Redis / PostgreSQL.

Real servers: ``DPOPKIT_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and
``DPOPKIT_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
Under ``CI=true`` a missing server fails the run; elsewhere the tests that need
it are skipped with a loud reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from dpopkit import ALGORITHMS, DPoPKey

REDIS_URL = os.environ.get("DPOPKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("DPOPKIT_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

#: A fixed "now" for core tests (any value works; time is always injected).
NOW = 1_700_000_000.0


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1.0
        ):
            return True
    except OSError:
        return False


def missing_real_part(message: str) -> NoReturn:
    """Fail under CI=true, else skip loudly: a real server or binary the test needs is absent."""
    if IN_CI:
        pytest.fail(f"{message}: CI=true requires it", pytrace=False)
    pytest.skip(f"!!! SKIPPED: {message}; install or start it to run these tests !!!")


def _require_server(name: str, url: str, port: int) -> None:
    if not _answers(url, port):
        missing_real_part(f"{name} at {url} does not answer")


@pytest.fixture
def now() -> float:
    return NOW


@pytest.fixture(params=ALGORITHMS)
def any_key(request: pytest.FixtureRequest) -> DPoPKey:
    """A key for every supported algorithm (RSA keys are cached: generation is slow)."""
    return _key_for(request.param)


_KEYS: dict[str, DPoPKey] = {}


def _key_for(alg: str) -> DPoPKey:
    if alg not in _KEYS:
        _KEYS[alg] = DPoPKey.generate(alg)
    return _KEYS[alg]


@pytest.fixture
def es256_key() -> DPoPKey:
    return DPoPKey.generate("ES256")


@pytest.fixture
def redis_url() -> str:
    _require_server("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def pg_dsn() -> str:
    _require_server("PostgreSQL", PG_DSN, 5432)
    return PG_DSN


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix / schema suffix unique to one test."""
    return f"t{uuid.uuid4().hex[:12]}"


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` in the Redis at ``url``; how many there were."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()
