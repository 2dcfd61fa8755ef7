"""Abuse limits of the authorization server: login, registration and scrypt work.

Login throttling (HD-3), a registration rate limit (HD-2) and one bound on
concurrent scrypt computations.

The two counters keep their state in a :class:`~dpopkit.storage.counters.CounterStore`:
in memory and per process by default (several processes then multiply the budgets,
and a restart forgets them), or shared by every instance (Redis: one budget for the
whole deployment; ``dpopkit serve`` uses it whenever ``replay_url`` is Redis). Their
rules are written once here, as the updates the store applies atomically, so every
store enforces the same ones. A shared store that cannot answer raises
:class:`~dpopkit.storage.records.StoreError` and the request is refused (503), never
let through unthrottled. The scrypt limiter protects this process's CPUs and stays
per process. Nothing blocks a request for long: a throttled caller is refused at
once and a busy one after a short wait, with a typed error. The two counters take
an injected clock (tests never sleep).

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from dpopkit.errors import Reason, TemporarilyUnavailableError
from dpopkit.storage.counters import (
    MAX_RECORD,
    CounterStore,
    Entry,
    MemoryCounterStore,
    Record,
    Update,
)
from dpopkit.storage.sql import hash_secret, verify_secret

__all__ = [
    "SCRYPT_LIMITER",
    "LoginThrottle",
    "RateLimitedError",
    "RateLimiter",
    "ServerBusyError",
    "WorkLimiter",
    "WouldBlockError",
    "no_waiting",
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


class WouldBlockError(Exception):
    """Expensive work was asked for inside :func:`no_waiting` (not an error of the request).

    The caller runs the handler again where it may wait (a worker thread); nothing was
    written before the expensive step.
    """


_NO_WAITING: ContextVar[bool] = ContextVar("dpopkit_no_waiting", default=False)


@contextmanager
def no_waiting() -> Iterator[None]:
    """Within the block, :meth:`WorkLimiter.slot` raises :class:`WouldBlockError` at once.

    For handlers run on the event loop: they answer directly when they need no scrypt
    (a client secret already verified), and are handed to a thread when they do.
    """
    token = _NO_WAITING.set(True)
    try:
        yield
    finally:
        _NO_WAITING.reset(token)


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
            WouldBlockError: inside :func:`no_waiting`.
        """
        if _NO_WAITING.get():
            raise WouldBlockError
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


class LoginThrottle:
    """Failed sign-ins per username and per client address, with growing delays and lockout.

    HD-3 (password guessing; RFC 6749 §10.10: the chance of guessing a credential must
    stay small). The counts live in ``state``: in this process by default, or in a
    :class:`~dpopkit.storage.counters.CounterStore` that several processes share (then
    they enforce one budget, not one each).

    Args:
        free_failures: failures allowed before any delay.
        base_delay: the first delay in seconds; each further failure doubles it.
        max_delay: the longest delay.
        lockout_failures: failures (per key) that lock the key for ``lockout_seconds``.
        lockout_seconds: how long a lockout lasts; the count restarts afterwards.
        address_factor: an address gets this many times the username budgets (several
            users may share one address, e.g. behind NAT).
        forget_after: seconds after the last failure when a key is forgotten.
        max_keys: keys remembered at most by the in-process state (the oldest are
            dropped first).
        clock: returns the current time.
        state: where the counts are kept (default: a
            :class:`~dpopkit.storage.counters.MemoryCounterStore` of ``max_keys``).

    Raises:
        StoreError: from every method, when a shared ``state`` cannot answer; the
            caller refuses the sign-in (503) without checking the password.
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
        state: CounterStore | None = None,
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
        self.state: CounterStore = (
            state if state is not None else MemoryCounterStore(max_keys=max_keys)
        )

    @property
    def _keys(self) -> Mapping[str, object]:
        """The in-process records (empty when the state is shared)."""
        state = self.state
        return state.entries if isinstance(state, MemoryCounterStore) else {}

    @staticmethod
    def _user_key(username: str) -> str:
        # Bounded memory whatever the submitted username: long ones are kept as a digest.
        if len(username) <= 128:
            return f"u:{username}"
        return "u#" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()

    def _keys_for(self, username: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(f"login:{self._user_key(username)}", 1)]
        if address:
            keys.append((f"login:a:{address}", self.address_factor))
        return keys

    def retry_after(self, *, username: str, address: str | None) -> float:
        """Seconds until an attempt for ``username`` from ``address`` may be checked (0: now)."""
        now = self.clock()
        wait = 0.0
        for key, _ in self._keys_for(username, address):
            record = self.state.get(key, now=now)
            if record is not None:
                wait = max(wait, record[_BLOCKED_UNTIL] - now)
        return max(0.0, wait)

    def _count(self, factor: int, now: float) -> Update:
        """The rule of one failure on a key with ``factor`` times the budgets."""
        lockout = self.lockout_failures * factor
        free = self.free_failures * factor

        def update(old: Record | None) -> Entry:
            count, blocked_until, last = old if old is not None else (0.0, 0.0, 0.0)
            if old is None or now - last > self.forget_after:
                count, blocked_until = 0.0, 0.0
            if count >= lockout and blocked_until <= now:
                count, blocked_until = 0.0, 0.0  # a lockout ran out: start afresh
            count += 1
            if count >= lockout:
                blocked_until = now + self.lockout_seconds
            elif count > free:
                steps = int(count) - free - 1
                blocked_until = now + min(self.max_delay, self.base_delay * 2 ** min(steps, 32))
            expires_at = max(now + self.forget_after, blocked_until)
            return (count, blocked_until, now), expires_at

        return update

    def failure(self, *, username: str, address: str | None) -> None:
        """Record a failed sign-in (wrong password or unknown user)."""
        now = self.clock()
        for key, factor in self._keys_for(username, address):
            self.state.change(key, self._count(factor, now), now=now)

    def success(self, *, username: str) -> None:
        """Forget the failures of ``username`` (the address keeps its count)."""
        self.state.change(f"login:{self._user_key(username)}", _forget, now=self.clock())


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding log).

    HD-2 (open registration; RFC 7591 §5: an open registration endpoint should be rate
    limited). The log lives in ``state``: in this process by default, or in a shared
    :class:`~dpopkit.storage.counters.CounterStore` (one budget for every process).

    Args:
        limit: events allowed per window and key.
        window: the window in seconds.
        max_keys: keys remembered at most by the in-process state (the least recently
            used are dropped).
        clock: returns the current time.
        state: where the logs are kept (default: a
            :class:`~dpopkit.storage.counters.MemoryCounterStore` of ``max_keys``).
        name: the namespace of this limiter's keys in ``state``.

    Raises:
        ValueError: a bad limit or window, or a limit over 1024 with a shared ``state``
            (each event in the window is one number of its record).
        StoreError: from :meth:`hit`, when a shared ``state`` cannot answer.
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.time,
        state: CounterStore | None = None,
        name: str = "rate",
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("need limit >= 1 and window > 0")
        if state is not None and not isinstance(state, MemoryCounterStore) and limit > MAX_RECORD:
            raise ValueError(f"a shared state holds a limit of {MAX_RECORD} at most")
        if not name or ":" in name:
            raise ValueError("name must be non-empty, without ':'")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self.name = name
        self.state: CounterStore = (
            state if state is not None else MemoryCounterStore(max_keys=max_keys)
        )

    def hit(self, key: str) -> int:
        """Count one event for ``key``; return 0 when allowed, else seconds to wait (>= 1)."""
        now = self.clock()
        wait = 0

        def update(old: Record | None) -> Entry:
            nonlocal wait
            times = [t for t in old or () if now - t < self.window]
            if len(times) >= self.limit:
                wait = max(1, math.ceil(times[0] + self.window - now))
            else:
                wait = 0
                times.append(now)
            return tuple(times), max(times) + self.window

        self.state.change(f"{self.name}:{key}", update, now=now)
        return wait


#: Fields of a login throttle record: (failures, blocked until, last failure).
_BLOCKED_UNTIL = 1


def _forget(_: Record | None) -> None:
    return None
