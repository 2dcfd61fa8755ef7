"""Abuse limits of the authorization server: login, registration and scrypt work.

Login throttling, a registration rate limit and one bound on concurrent scrypt
computations.

All three are in-memory and per process: a deployment with several processes
multiplies the budgets by the number of processes, and a restart forgets them.
Each is bounded in memory and never blocks a request for long: a throttled caller
is refused at once and a busy one after a short wait, with a typed error. The two
counters take an injected clock (tests never sleep).

* :class:`LoginThrottle`: failed sign-ins counted per username and per client
  address; after ``free_failures`` each further failure imposes a delay that
  doubles (``base_delay`` … ``max_delay``) during which any attempt is refused
  without checking the password; after ``lockout_failures`` the key is locked
  for ``lockout_seconds`` (the right password is refused too). A success resets
  the username (Keycloak's "quick login check" and "wait increment" model).
* :class:`RateLimiter`: at most ``limit`` events per ``window`` seconds per key
  (the ``/register`` endpoint, per client address); refusals carry the seconds
  until the next slot (HTTP 429 ``Retry-After``).
* :class:`WorkLimiter`: at most ``slots`` concurrent scrypt computations in the
  process (login passwords, client secrets, secrets of registered clients); a
  caller that cannot get a slot within ``wait`` seconds is told the server is
  busy (503 ``temporarily_unavailable``), so a flood of bad secrets cannot take
  every CPU or pile up worker threads.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dpopkit.errors import Reason, TemporarilyUnavailableError
from dpopkit.storage.sql import hash_secret, verify_secret

__all__ = [
    "SCRYPT_LIMITER",
    "LoginThrottle",
    "RateLimitedError",
    "RateLimiter",
    "ServerBusyError",
    "WorkLimiter",
]


class ServerBusyError(TemporarilyUnavailableError):
    """Every scrypt slot is taken: try again shortly (503 ``temporarily_unavailable``)."""

    default_reason = Reason.SERVER_BUSY


class RateLimitedError(TemporarilyUnavailableError):
    """Too many requests from one client address (429 with ``Retry-After``, RFC 6585 §4)."""

    as_status = 429
    rs_status = 429
    default_reason = Reason.RATE_LIMITED

    def __init__(self, retry_after: int) -> None:
        super().__init__(Reason.RATE_LIMITED, "too many requests; retry later")
        self.retry_after = max(1, int(retry_after))

    def extra_headers(self) -> list[tuple[str, str]]:  # noqa: D102
        return [("Retry-After", str(self.retry_after))]


class WorkLimiter:
    """At most ``slots`` concurrent expensive computations (scrypt) in this process.

    Args:
        slots: concurrent computations; default: half the CPUs, at least one.
        wait: seconds a caller may wait for a slot before :class:`ServerBusyError`.
    """

    def __init__(self, *, slots: int | None = None, wait: float = 0.5) -> None:
        count = slots if slots is not None else max(1, (os.cpu_count() or 2) // 2)
        if count < 1:
            raise ValueError("slots must be >= 1")
        self.slots = count
        self.wait = wait
        self._sem = threading.BoundedSemaphore(count)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the body of the ``with``.

        Raises:
            ServerBusyError: no slot became free within ``wait`` seconds.
        """
        if not self._sem.acquire(timeout=self.wait):
            raise ServerBusyError(Reason.SERVER_BUSY, "the server is busy; retry")
        try:
            yield
        finally:
            self._sem.release()

    def verify(self, secret: str, stored: str) -> bool:
        """:func:`~dpopkit.storage.sql.verify_secret` inside a slot.

        Raises:
            ServerBusyError: no slot free (never a silent ``False``).
        """
        with self.slot():
            return verify_secret(secret, stored)

    def hash(self, secret: str) -> str:
        """:func:`~dpopkit.storage.sql.hash_secret` inside a slot.

        Raises:
            ServerBusyError: no slot free.
        """
        with self.slot():
            return hash_secret(secret)


#: The process-wide scrypt limiter shared by login, client authentication and registration.
SCRYPT_LIMITER = WorkLimiter()


@dataclass(slots=True)
class _Failures:
    count: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Failed sign-ins per username and per client address, with growing delays and lockout.

    Args:
        free_failures: failures allowed before any delay.
        base_delay: the first delay in seconds; each further failure doubles it.
        max_delay: the longest delay.
        lockout_failures: failures (per key) that lock the key for ``lockout_seconds``.
        lockout_seconds: how long a lockout lasts; the count restarts afterwards.
        address_factor: an address gets this many times the username budgets (several
            users may share one address, e.g. behind NAT).
        forget_after: seconds after the last failure when a key is forgotten.
        max_keys: keys remembered at most (the oldest are dropped first).
        clock: returns the current time.
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        lockout_failures: int = 10,
        lockout_seconds: float = 900.0,
        address_factor: int = 5,
        forget_after: float = 3600.0,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= free_failures < lockout_failures:
            raise ValueError("need 0 <= free_failures < lockout_failures")
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lockout_failures = lockout_failures
        self.lockout_seconds = lockout_seconds
        self.address_factor = max(1, address_factor)
        self.forget_after = forget_after
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def _user_key(username: str) -> str:
        # Bounded memory whatever the submitted username: long ones are kept as a digest.
        if len(username) <= 128:
            return f"u:{username}"
        return "u#" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()

    def _keys_for(self, username: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(self._user_key(username), 1)]
        if address:
            keys.append((f"a:{address}", self.address_factor))
        return keys

    def retry_after(self, *, username: str, address: str | None) -> float:
        """Seconds until an attempt for ``username`` from ``address`` may be checked (0: now)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, _ in self._keys_for(username, address):
                entry = self._keys.get(key)
                if entry is not None:
                    wait = max(wait, entry.blocked_until - now)
        return max(0.0, wait)

    def failure(self, *, username: str, address: str | None) -> None:
        """Record a failed sign-in (wrong password or unknown user)."""
        now = self.clock()
        with self._lock:
            for key, factor in self._keys_for(username, address):
                entry = self._keys.pop(key, None)
                if entry is None or now - entry.last > self.forget_after:
                    entry = _Failures()
                if entry.count >= self.lockout_failures * factor and entry.blocked_until <= now:
                    entry = _Failures()  # a lockout ran out: start afresh
                entry.count += 1
                entry.last = now
                if entry.count >= self.lockout_failures * factor:
                    entry.blocked_until = now + self.lockout_seconds
                elif entry.count > self.free_failures * factor:
                    steps = entry.count - self.free_failures * factor - 1
                    delay = min(self.max_delay, self.base_delay * 2 ** min(steps, 32))
                    entry.blocked_until = now + delay
                self._keys[key] = entry
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)

    def success(self, *, username: str) -> None:
        """Forget the failures of ``username`` (the address keeps its count)."""
        with self._lock:
            self._keys.pop(self._user_key(username), None)


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding log).

    Args:
        limit: events allowed per window and key.
        window: the window in seconds.
        max_keys: keys remembered at most (the least recently used are dropped).
        clock: returns the current time.
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("need limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    def hit(self, key: str) -> int:
        """Count one event for ``key``; return 0 when allowed, else seconds to wait (>= 1)."""
        now = self.clock()
        with self._lock:
            times = [t for t in self._keys.pop(key, []) if now - t < self.window]
            if len(times) >= self.limit:
                self._keys[key] = times
                return max(1, math.ceil(times[0] + self.window - now))
            times.append(now)
            self._keys[key] = times
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        return 0
