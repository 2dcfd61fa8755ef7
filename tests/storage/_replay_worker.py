"""A replay-cache hammer run in a separate OS process (multiprocessing, spawn)."""

from __future__ import annotations

from typing import Any


def build(kind: str, params: dict[str, Any]) -> Any:
    """Build a sync replay cache of ``kind`` from picklable ``params``."""
    if kind == "sqlite":
        from dpopkit.storage.sqlite import SQLiteReplayCache

        return SQLiteReplayCache(params["path"])
    if kind == "redis":
        from dpopkit.storage.redis import RedisReplayCache

        return RedisReplayCache.from_url(params["url"], prefix=params["prefix"])
    if kind == "postgres":
        from dpopkit.storage.postgres import PostgresReplayCache

        return PostgresReplayCache(params["dsn"], schema=params["schema"])
    raise ValueError(kind)


def hammer(
    kind: str,
    params: dict[str, Any],
    keys: list[str],
    now: float,
    barrier: Any,
    out: Any,
) -> None:
    """Wait for the other process, then try every key once; report the keys won."""
    cache = build(kind, params)
    try:
        barrier.wait(timeout=30)
        won = [key for key in keys if cache.check_and_store(key, now + 60.0, now=now)]
        out.put(won)
    except BaseException as exc:  # report, so the parent fails with the cause
        out.put(repr(exc))
        raise
    finally:
        cache.close()
