"""In-process replay cache: one process only, bounded, never evicting a live entry.

Expired entries are dropped in time order from a heap, and in bounded steps:
one call pops at most ``purge_step`` (64) heap entries to forget entries past
their grace, and at most as many again to make room when the table is full,
so no request pays for purging a large backlog at once (a table of a million
entries never stalls one call); since every call adds at most one entry and
may drop up to 64, the backlog still drains. When the table is full of live
entries the cache refuses (``ReplayStoreError``, reason STORE_FULL) and the
caller fails closed: evicting a live entry would reopen replay (SEC-107/108).

Like the SQL backends, an expired entry is forgotten only ``purge_grace`` seconds
after its expiry (it can be reused as soon as it expires), so a clock that jumps
forward and steps back inside the window does not revive a used ``jti``
(SEC-76). A full table makes room by dropping expired entries (grace or
not), oldest first, never a live one.

It cannot see replays in other worker processes. Construct it with
``single_process=True`` to state that the server runs one process; dpopkit's
adapters refuse to start it under several workers otherwise.
"""

from __future__ import annotations

import heapq
import threading
from heapq import heappush as _heappush

from dpopkit.errors import Reason, ReplayStoreError

__all__ = ["PURGE_STEP", "AsyncMemoryReplayCache", "MemoryReplayCache"]

#: Heap entries one call examines at most per purge step (twice this when the table is full).
PURGE_STEP = 64


class MemoryReplayCache:
    """A thread-safe, bounded, in-memory :class:`~dpopkit.ReplayCache`.

    Args:
        max_entries: live entries held at most; beyond that inserts are refused.
        single_process: the caller asserts this process is the only one verifying
            proofs for this server (checked by the RS adapters).
        purge_grace: seconds an expired entry is kept (while there is room) before it
            is forgotten.
        purge_step: heap entries one call examines at most to forget expired
            entries, and again at most to make room in a full table (>= 2).
    """

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        single_process: bool = False,
        purge_grace: float = 300.0,
        purge_step: int = PURGE_STEP,
    ) -> None:
        if max_entries < 1 or purge_grace < 0 or purge_step < 2:
            raise ValueError("max_entries must be >= 1, purge_grace >= 0 and purge_step >= 2")
        self.max_entries = max_entries
        self.purge_grace = purge_grace
        self.purge_step = purge_step
        self.single_process = single_process
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, until: float, *, need_room: bool = False) -> None:
        """Pop at most ``purge_step`` heap entries expiring at or before ``until``.

        With ``need_room``, stop as soon as one entry has been forgotten.
        """
        heap, expiry = self._heap, self._expiry
        for _ in range(self.purge_step):
            if not heap or heap[0][0] > until:
                return
            when, key = heapq.heappop(heap)
            if expiry.get(key) == when:  # else a superseded entry of a re-stored key
                del expiry[key]
                if need_room:
                    return

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live."""
        heap, expiry = self._heap, self._expiry
        with self._lock:
            if heap and heap[0][0] <= now - self.purge_grace:  # else _purge would pop nothing
                self._purge(now - self.purge_grace)
            # A live entry is a replay; an expired one (kept for the grace) may be reused.
            if expiry.get(key, now) > now:
                return False
            if len(expiry) >= self.max_entries and key not in expiry:
                # make room from an expired entry (oldest first) before refusing
                self._purge(now, need_room=True)
                if len(expiry) >= self.max_entries:
                    raise ReplayStoreError(Reason.STORE_FULL, "replay cache is full")
            expiry[key] = expires_at
            _heappush(heap, (expires_at, key))
            return True


class AsyncMemoryReplayCache:
    """The :class:`MemoryReplayCache` behind the async protocol (no awaits inside)."""

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        single_process: bool = False,
        purge_grace: float = 300.0,
        purge_step: int = PURGE_STEP,
    ) -> None:
        self._sync = MemoryReplayCache(
            max_entries=max_entries,
            single_process=single_process,
            purge_grace=purge_grace,
            purge_step=purge_step,
        )

    @property
    def single_process(self) -> bool:
        """Whether the caller asserted a single verifying process."""
        return self._sync.single_process

    def __len__(self) -> int:
        return len(self._sync)

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live."""
        return self._sync.check_and_store(key, expires_at, now=now)
