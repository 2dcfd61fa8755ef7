"""Replay caches from a URL: ``replay_url`` (``serve``) and ``--replay`` (``serve-api``).

One function decides which backend a URL names and with which time bounds, so the
authorization server and the resource server accept and refuse the same set:

- ``memory``: in this process only (one worker);
- ``sqlite``: ``replay.db`` (or the name given) in the server's data directory;
  ``sqlite:///PATH``: that file (``sqlite:////abs/path`` or ``sqlite:///rel/path``);
- ``redis://``, ``rediss://``, ``unix://``: Redis, keys under ``prefix``;
- ``postgresql://``, ``postgres://``: a PostgreSQL table, in ``schema`` when given.

Network stores get the client-side time bound ``timeout`` on every call (a frozen
store answers 503 rather than hanging a request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dpopkit.core.replay import AsyncReplayCache, ReplayCache

__all__ = [
    "REPLAY_URL_FORMS",
    "ReplayURL",
    "async_replay_cache_from_url",
    "parse_replay_url",
    "replay_cache_from_url",
]

#: The forms a replay URL may take, as error messages name them.
REPLAY_URL_FORMS = (
    "memory, sqlite, sqlite:///PATH, a redis://, rediss:// or unix:// URL, or a postgresql:// URL"
)

_REDIS = ("redis://", "rediss://", "unix://")
_POSTGRES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class ReplayURL:
    """A replay URL, read: which backend, and where.

    Attributes:
        backend: ``memory``, ``sqlite``, ``redis`` or ``postgres``.
        url: the URL as given.
        path: the SQLite file (``sqlite`` only; None for a bare ``sqlite``: the data dir's).
    """

    backend: Literal["memory", "sqlite", "redis", "postgres"]
    url: str
    path: Path | None = None


def parse_replay_url(url: str) -> ReplayURL:
    """Read ``url`` as a replay store URL.

    Raises:
        ValueError: ``url`` is none of :data:`REPLAY_URL_FORMS`.
    """
    lowered = url.lower()
    if url == "memory":
        return ReplayURL("memory", url)
    if url == "sqlite":
        return ReplayURL("sqlite", url)
    if lowered.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return ReplayURL("sqlite", url, Path(url[len("sqlite:///") :]))
    if lowered.startswith(_REDIS) and url.split("://", 1)[1]:
        return ReplayURL("redis", url)
    if lowered.startswith(_POSTGRES) and url.split("://", 1)[1]:
        return ReplayURL("postgres", url)
    raise ValueError(f"{url!r} is not a replay store URL: use {REPLAY_URL_FORMS}")


def _sqlite_path(parsed: ReplayURL, data_dir: Path | None, name: str) -> Path:
    if parsed.path is not None:
        return parsed.path
    if data_dir is None:
        raise ValueError("a bare sqlite needs a data directory; give sqlite:///PATH")
    return data_dir / name


def _check_options(parsed: ReplayURL, *, prefix: str, schema: str | None) -> None:
    if prefix and parsed.backend != "redis":
        raise ValueError("a key prefix applies to a Redis replay store only")
    if schema is not None and parsed.backend != "postgres":
        raise ValueError("a schema applies to a PostgreSQL replay store only")


def replay_cache_from_url(
    url: str,
    *,
    data_dir: Path | None = None,
    sqlite_name: str = "replay.db",
    timeout: float | None = None,
    schema: str | None = None,
    prefix: str = "",
) -> ReplayCache:
    """The (synchronous) replay cache ``url`` names.

    Args:
        url: one of :data:`REPLAY_URL_FORMS`.
        data_dir: where a bare ``sqlite`` keeps its file.
        sqlite_name: that file's name in ``data_dir``.
        timeout: seconds per call for Redis and PostgreSQL (default: their own).
        schema: the PostgreSQL schema of the table.
        prefix: the Redis key prefix.

    Raises:
        ValueError: a bad URL, a bare ``sqlite`` without ``data_dir``, or an option the
            backend does not take.
        ImportError: the backend's driver is not installed.
    """
    parsed = parse_replay_url(url)
    _check_options(parsed, prefix=prefix, schema=schema)
    if parsed.backend == "memory":
        from dpopkit.storage.memory import MemoryReplayCache

        return MemoryReplayCache(single_process=True)
    if parsed.backend == "sqlite":
        from dpopkit.storage.sqlite import SQLiteReplayCache

        return SQLiteReplayCache(_sqlite_path(parsed, data_dir, sqlite_name))
    if parsed.backend == "postgres":
        from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT
        from dpopkit.storage.postgres import PostgresReplayCache

        return PostgresReplayCache(url, schema=schema, timeout=timeout or DEFAULT_STORE_TIMEOUT)
    from dpopkit.storage.redis import DEFAULT_TIMEOUT, RedisReplayCache

    return RedisReplayCache.from_url(url, prefix=prefix, timeout=timeout or DEFAULT_TIMEOUT)


def async_replay_cache_from_url(
    url: str,
    *,
    data_dir: Path | None = None,
    sqlite_name: str = "replay.db",
    timeout: float | None = None,
    schema: str | None = None,
    prefix: str = "",
) -> AsyncReplayCache:
    """The asyncio replay cache ``url`` names; arguments as :func:`replay_cache_from_url`."""
    parsed = parse_replay_url(url)
    _check_options(parsed, prefix=prefix, schema=schema)
    if parsed.backend == "memory":
        from dpopkit.storage.memory import AsyncMemoryReplayCache

        return AsyncMemoryReplayCache(single_process=True)
    if parsed.backend == "sqlite":
        from dpopkit.storage.sqlite import AsyncSQLiteReplayCache

        return AsyncSQLiteReplayCache(_sqlite_path(parsed, data_dir, sqlite_name))
    if parsed.backend == "postgres":
        from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT
        from dpopkit.storage.postgres import AsyncPostgresReplayCache

        return AsyncPostgresReplayCache(
            url, schema=schema, timeout=timeout or DEFAULT_STORE_TIMEOUT
        )
    from dpopkit.storage.redis import DEFAULT_TIMEOUT, AsyncRedisReplayCache

    return AsyncRedisReplayCache.from_url(url, prefix=prefix, timeout=timeout or DEFAULT_TIMEOUT)
