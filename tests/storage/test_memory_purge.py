"""The memory replay cache purges in bounded steps: no call pays for a whole backlog."""

from __future__ import annotations

import secrets

import pytest

from dpopkit.errors import Reason, ReplayStoreError
from dpopkit.storage.memory import PURGE_STEP, AsyncMemoryReplayCache, MemoryReplayCache

NOW = 1_700_000_000.0
TTL = 65.0
GRACE = 300.0
N = 20_000  # entries in the backlog: ~300 times the per-call bound


def _key() -> str:
    return secrets.token_hex(16)


def _examined(cache: MemoryReplayCache, key: str, expires_at: float, now: float) -> int:
    """Heap entries one call popped (its heap shrinks by pops and grows by one push)."""
    before = len(cache._heap)
    cache.check_and_store(key, expires_at, now=now)
    return before + 1 - len(cache._heap)


def _filled(max_entries: int, count: int) -> MemoryReplayCache:
    cache = MemoryReplayCache(max_entries=max_entries, purge_grace=GRACE)
    for i in range(count):
        # spread over the window, as real traffic is; all live at NOW, expired at NOW + TTL + 1
        assert cache.check_and_store(_key(), NOW + 1 + TTL * i / count, now=NOW) is True
    return cache


def test_hd20_backlog_past_grace_drains_in_bounded_steps() -> None:
    """HD-20: when a whole table passes its grace at once (RFC 9449 §11.1 replay cache), each
    call pops at most ``purge_step`` heap entries, yet the backlog drains."""
    cache = _filled(2 * N, N)
    later = NOW + TTL + GRACE + 10
    examined = [_examined(cache, _key(), later + TTL, later) for _ in range(2 * N // PURGE_STEP)]
    assert max(examined) <= PURGE_STEP
    assert len(cache) == len(examined)  # only the new keys are left: the backlog is gone
    assert len(cache._heap) == len(examined)


def test_hd20_full_table_of_expired_entries_makes_room_one_at_a_time() -> None:
    """HD-20: a table full of expired entries still in their grace: a new key gets room from
    the oldest expired entry and the call examines a bounded number of entries, where the
    whole table used to be purged in one call."""
    cache = _filled(N, N)
    expired = NOW + TTL + 2  # every entry expired, none past its grace
    examined = [_examined(cache, _key(), expired + TTL, expired) for _ in range(500)]
    assert max(examined) <= 2 * PURGE_STEP
    assert len(cache) == N  # room was made one entry at a time, nothing more was dropped


def test_hd20_full_table_of_live_entries_still_fails_closed() -> None:
    """HD-20 / SEC-107: bounded purging never evicts a live entry; full of live → STORE_FULL."""
    cache = _filled(N, N)
    before = len(cache._heap)
    with pytest.raises(ReplayStoreError) as info:
        cache.check_and_store(_key(), NOW + TTL, now=NOW)
    assert info.value.reason is Reason.STORE_FULL
    assert len(cache._heap) == before  # nothing was popped: every entry is live


def test_hd20_superseded_entries_count_toward_the_bound() -> None:
    """HD-20: a key re-stored after expiry leaves a superseded heap entry; popping those is
    bounded too, and the re-stored key stays live (a replay of it is refused)."""
    cache = MemoryReplayCache(max_entries=10 * PURGE_STEP, purge_grace=GRACE)
    keys = [_key() for _ in range(4 * PURGE_STEP)]
    for key in keys:
        assert cache.check_and_store(key, NOW + 1, now=NOW) is True
    for key in keys:  # expired, inside the grace: reusable, leaves a superseded entry
        assert cache.check_and_store(key, NOW + TTL, now=NOW + 2) is True
    past_grace = NOW + 1 + GRACE + 1
    examined = [_examined(cache, _key(), past_grace + TTL, past_grace) for _ in range(3)]
    assert max(examined) <= PURGE_STEP
    assert all(cache.check_and_store(key, NOW + TTL, now=NOW + 3) is False for key in keys)


def test_hd20_purge_step_is_validated_and_passed_through() -> None:
    """HD-20: ``purge_step`` must allow progress (>= 2); the async twin takes it too."""
    with pytest.raises(ValueError):
        MemoryReplayCache(purge_step=1)
    assert AsyncMemoryReplayCache(purge_step=8)._sync.purge_step == 8
