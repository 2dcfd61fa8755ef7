"""Counter stores: the state of the abuse limits (login throttle, registration limit).

A counter store keeps one small record per key (a few numbers, such as a failure
count and the time a delay ends) and changes it atomically: :meth:`CounterStore.change`
runs the caller's pure ``update`` on the current record and stores what it returns,
so that two callers, in one process or in several, never both act on the same old
record. The throttles of :mod:`dpopkit.server.throttle` hold their rules in those
``update`` functions; the stores only keep records, so every store enforces the same
rules:

* :class:`MemoryCounterStore`: in this process, bounded (least recently changed
  keys dropped first); several processes each keep their own counts;
* :class:`~dpopkit.storage.redis.RedisCounterStore`: shared by every process and
  host that uses one Redis (a compare-and-set script; key names are digests).

Each record carries its own expiry, judged on the caller's clock; a store forgets a
record once that time has passed (Redis also drops it by TTL, so nothing grows).
A store that cannot answer raises :class:`~dpopkit.storage.records.StoreError`: the
caller refuses the request (503), it never skips the limit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from dpopkit.storage.records import StoreError

__all__ = [
    "CounterStore",
    "Entry",
    "MemoryCounterStore",
    "Record",
    "Update",
    "decode_entry",
    "encode_entry",
]

#: The numbers kept for one key.
Record = tuple[float, ...]
#: A record and the time (on the caller's clock) after which it is forgotten.
Entry = tuple[Record, float]
#: The rule applied by :meth:`CounterStore.change`: the live record (None: no record)
#: to the new entry (None: forget the key). It may run more than once per change
#: (a networked store retries when another caller changed the record first), so it
#: must not act on anything else.
Update = Callable[[Record | None], Entry | None]

#: Numbers in one record at most (a registration window keeps one per request).
MAX_RECORD = 1024


class CounterStore(Protocol):
    """Small records per key, read and changed atomically.

    Keys are ``namespace:value``; the namespace is a constant of the caller, the value
    may come from a client (a username, an address) and is never stored in clear by a
    shared store.
    """

    def get(self, key: str, *, now: float) -> Record | None:
        """The live record of ``key`` (None when absent or past its expiry).

        Raises:
            StoreError: the store cannot answer.
        """
        ...

    def change(self, key: str, update: Update, *, now: float) -> Record | None:
        """Replace the live record of ``key`` with ``update(record)`` atomically; return it.

        Raises:
            StoreError: the store cannot answer.
        """
        ...


def encode_entry(entry: Entry) -> bytes:
    """The text form of an entry in a shared store: ``expires_at;n1,n2,...``."""
    record, expires_at = entry
    if len(record) > MAX_RECORD or not all(map(math.isfinite, (*record, expires_at))):
        raise ValueError("a counter record holds at most 1024 finite numbers")
    return f"{expires_at!r};{','.join(map(repr, record))}".encode("ascii")


def decode_entry(value: bytes) -> Entry:
    """Read :func:`encode_entry`'s form.

    Raises:
        StoreError: the value is not such a record (the store was written by something else).
    """
    try:
        expires, _, numbers = value.decode("ascii").partition(";")
        record = tuple(float(n) for n in numbers.split(",")) if numbers else ()
        entry = (record, float(expires))
    except (UnicodeDecodeError, ValueError):
        raise StoreError("a counter record is corrupt") from None
    if len(record) > MAX_RECORD or not all(map(math.isfinite, (*record, entry[1]))):
        raise StoreError("a counter record is corrupt")
    return entry


class MemoryCounterStore:
    """A :class:`CounterStore` in this process: thread-safe and bounded.

    Args:
        max_keys: keys held at most; the least recently changed one is dropped first.
    """

    def __init__(self, *, max_keys: int = 10000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._lock = threading.Lock()
        #: key -> (record, expires_at), least recently changed first
        self.entries: OrderedDict[str, Entry] = OrderedDict()

    def _live(self, key: str, now: float) -> Record | None:
        entry = self.entries.get(key)
        if entry is None or now > entry[1]:
            return None
        return entry[0]

    def get(self, key: str, *, now: float) -> Record | None:
        """The live record of ``key``; see :meth:`CounterStore.get`."""
        with self._lock:
            return self._live(key, now)

    def change(self, key: str, update: Update, *, now: float) -> Record | None:
        """Apply ``update`` under this store's lock; see :meth:`CounterStore.change`."""
        with self._lock:
            entry = update(self._live(key, now))
            self.entries.pop(key, None)
            if entry is None:
                return None
            self.entries[key] = entry
            while len(self.entries) > self.max_keys:
                self.entries.popitem(last=False)
            return entry[0]
