"""Redis replay cache: several hosts share one Redis (redis-py, sync and asyncio).

RFC 9449 §11.1 asks the server to remember every ``jti`` while the proof could
still be accepted. One command decides, atomically, across instances too (SEC-74,
SEC-75)::

    SET <prefix><key> 1 NX PXAT <expires_at in ms>

The expiry is absolute (SEC-76): Redis
drops the key when *its* clock passes ``expires_at``, so a backward step of a
verifier's clock never revives a key. The verifiers' clocks and the Redis
server's clock must agree to well within the acceptance window; the first use
compares them and warns when they do not.

Fail closed (SEC-80): any Redis error or time-out raises
:class:`~dpopkit.errors.ReplayStoreError`, never "not seen". Socket and
connect time-outs are bounded (0.5 s by default) and commands are not
retried, so an outage costs at most about one time-out per request. The
socket time-out is the client-side deadline that also catches a server which
keeps the connection open but stops answering, so a client without one is
refused. redis-py gives each concurrent command its own pooled connection: a
stuck command holds up no other.

Eviction (SEC-108): run the replay keyspace
with ``maxmemory-policy noeviction``, so that a full Redis refuses writes (and
we fail closed). The ``volatile-*`` and ``allkeys-*`` policies evict exactly
these TTL-bearing keys and reopen replay; the first use checks the policy
and emits a :class:`~dpopkit.errors.SecurityWarning` once.

:class:`RedisCounterStore` keeps the records of the abuse limits (login throttle,
registration limit, :mod:`dpopkit.storage.counters`) in the same Redis, so that
every instance counts against one budget; it fails closed the same way (its error
is a :class:`~dpopkit.storage.records.StoreError`, answered with 503).

The redis package is imported only by this module (``pip install dpopkit[redis]``).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

from dpopkit.errors import ReplayStoreError, SecurityWarning, requires_extra
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.counters import Record, Update, decode_entry, encode_entry
from dpopkit.storage.records import StoreError

with requires_extra("redis", needed_by=__name__):
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    import redis.retry
    from redis.backoff import NoBackoff

__all__ = [
    "AsyncRedisReplayCache",
    "RedisCounterStore",
    "RedisReplayCache",
    "eviction_policy_is_risky",
]

#: Seconds; socket connect and read/write time-outs used by ``from_url``.
DEFAULT_TIMEOUT = 0.5
#: Seconds of disagreement between this host's clock and Redis's tolerated silently.
DEFAULT_MAX_CLOCK_SKEW = 5.0

_REDIS_ERRORS = (redis.RedisError, OSError)


def eviction_policy_is_risky(policy: str) -> bool:
    """Whether a Redis ``maxmemory-policy`` may evict live replay keys.

    ``volatile-*`` policies evict keys that carry a TTL (every replay key does)
    and ``allkeys-*`` evict any key; only ``noeviction`` makes a full Redis refuse
    writes, which dpopkit turns into a fail-closed error.
    """
    return policy.strip().lower().startswith(("volatile-", "allkeys-"))


def _expiry_ms(expires_at: float) -> int:
    # PXAT needs a positive integer; round up so the key never expires early.
    if not math.isfinite(expires_at):
        raise ValueError("expires_at must be finite")
    return max(1, math.ceil(expires_at * 1000))


def _store_error(exc: BaseException) -> ReplayStoreError:
    return ReplayStoreError(detail={"error": type(exc).__name__, "backend": "redis"})


def _require_socket_timeout(client: object) -> None:
    # Without a socket time-out a frozen server (connection open, no reply) hangs the
    # request until it comes back: nothing else bounds a read on the client side.
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping) and kwargs.get("socket_timeout") is None:
        raise ValueError(
            "the Redis client needs a socket_timeout (a client-side deadline); "
            "use from_url(), which sets 0.5 s"
        )


def _inspect(info: Mapping[str, Any], server_time: tuple[int, int] | None, max_skew: float) -> None:
    policy = str(info.get("maxmemory_policy", ""))
    if eviction_policy_is_risky(policy):
        warnings.warn(
            f"Redis maxmemory-policy is {policy!r}: it can evict live replay keys and "
            "reopen DPoP proof replay; use 'noeviction' for the replay keyspace",
            SecurityWarning,
            stacklevel=4,
        )
    if server_time is not None:
        skew = abs(server_time[0] + server_time[1] / 1e6 - time.time())
        if skew > max_skew:
            warnings.warn(
                f"the Redis clock differs from this host's by {skew:.1f} s; absolute replay "
                "expiries (PXAT) then protect a shorter or longer window than intended",
                SecurityWarning,
                stacklevel=4,
            )


class RedisReplayCache:
    """A :class:`~dpopkit.ReplayCache` in Redis (``SET NX PXAT``), shared by hosts.

    Args:
        client: a ``redis.Redis`` with a ``socket_timeout`` (see :meth:`from_url`).
        prefix: a namespace prepended to every key.
        check_server: on first use, check ``maxmemory-policy`` and the clock skew
            and emit a :class:`~dpopkit.errors.SecurityWarning` if they are unsafe.
        max_clock_skew: seconds of clock disagreement tolerated by that check.

    Raises:
        ValueError: the client has no ``socket_timeout``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "",
        check_server: bool = True,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        _require_socket_timeout(client)
        self.client = client
        self.prefix = prefix
        self.max_clock_skew = max_clock_skew
        self._checked = not check_server
        self._check_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        check_server: bool = True,
        **redis_kwargs: Any,
    ) -> RedisReplayCache:
        """Connect to ``url`` (``redis://``, ``rediss://``, ``unix://``) with bounded time-outs.

        Args:
            url: the Redis URL.
            prefix: a namespace prepended to every key.
            timeout: socket connect and read/write time-out in seconds (no retries).
            check_server: see the class.
            **redis_kwargs: passed on to ``redis.Redis.from_url``.
        """
        redis_kwargs.setdefault("socket_timeout", timeout)
        redis_kwargs.setdefault("socket_connect_timeout", timeout)
        redis_kwargs.setdefault("retry", redis.retry.Retry(NoBackoff(), 0))
        client = redis.Redis.from_url(url, **redis_kwargs)
        return cls(client, prefix=prefix, check_server=check_server)

    def check_server(self) -> None:
        """Check the eviction policy and the clock; warn (SecurityWarning) if unsafe.

        Raises:
            ReplayStoreError: Redis cannot be reached.
        """
        try:
            try:
                info = self.client.info("memory")
                server_time = self.client.time()
            except redis.ResponseError:  # INFO/TIME disabled (managed Redis): cannot tell
                info, server_time = {}, None
        except _REDIS_ERRORS as exc:
            raise _store_error(exc) from exc
        self._checked = True
        _inspect(info, server_time, self.max_clock_skew)

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        Expiry is judged by the Redis server's clock (``now`` is not sent). An
        ``expires_at`` already past on that clock is accepted like any other: the
        answer reflects whether the key is live, and the key is not kept.

        Raises:
            ReplayStoreError: Redis failed or timed out; the caller refuses the request.
        """
        if not self._checked:
            with self._check_lock:  # one check (and one warning) for concurrent first calls
                if not self._checked:
                    self.check_server()
        try:
            # RFC 9449 §11.1: SET NX decides atomically; PXAT is an absolute expiry
            stored = self.client.set(self.prefix + key, b"1", nx=True, pxat=_expiry_ms(expires_at))
        except _REDIS_ERRORS as exc:
            raise _store_error(exc) from exc
        return stored is True

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


class AsyncRedisReplayCache:
    """The asyncio :class:`~dpopkit.AsyncReplayCache` over ``redis.asyncio``.

    redis.asyncio runs on asyncio only; under trio use :class:`RedisReplayCache`
    in a worker thread. Arguments as :class:`RedisReplayCache`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "",
        check_server: bool = True,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        _require_socket_timeout(client)
        self.client = client
        self.prefix = prefix
        self.max_clock_skew = max_clock_skew
        self._checked = not check_server

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        check_server: bool = True,
        **redis_kwargs: Any,
    ) -> AsyncRedisReplayCache:
        """Connect to ``url`` with bounded time-outs; see :meth:`RedisReplayCache.from_url`."""
        redis_kwargs.setdefault("socket_timeout", timeout)
        redis_kwargs.setdefault("socket_connect_timeout", timeout)
        redis_kwargs.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
        client = redis.asyncio.Redis.from_url(url, **redis_kwargs)
        return cls(client, prefix=prefix, check_server=check_server)

    async def check_server(self) -> None:
        """Check the eviction policy and the clock; warn (SecurityWarning) if unsafe.

        Raises:
            ReplayStoreError: Redis cannot be reached.
        """
        try:
            try:
                info = await self.client.info("memory")
                server_time = await self.client.time()
            except redis.ResponseError:
                info, server_time = {}, None
        except _REDIS_ERRORS as exc:
            raise _store_error(exc) from exc
        self._checked = True
        _inspect(info, server_time, self.max_clock_skew)

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was not live (RFC 9449 §11.1).

        Raises:
            ReplayStoreError: Redis failed or timed out; the caller refuses the request.
        """
        if not self._checked:
            await self.check_server()
        try:
            # RFC 9449 §11.1: SET NX decides atomically; PXAT is an absolute expiry
            stored = await self.client.set(
                self.prefix + key, b"1", nx=True, pxat=_expiry_ms(expires_at)
            )
        except _REDIS_ERRORS as exc:
            raise _store_error(exc) from exc
        return stored is True

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()


# Compare-and-set: write ARGV[2] (PX ARGV[3] ms; '' deletes) only if the value is still
# ARGV[1] ('' for no key); else return the value found, for the caller's next attempt.
_CAS = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {0, current} end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return {1, ''}
"""


def _as_bytes(value: bytes | str) -> bytes:
    # A client made with decode_responses=True answers str.
    return value.encode() if isinstance(value, str) else value


#: Compare-and-set attempts one change makes at most before failing closed.
MAX_ATTEMPTS = 64


class RedisCounterStore:
    """A :class:`~dpopkit.storage.counters.CounterStore` in Redis, shared by every instance.

    A change reads the record, applies the caller's rule and writes the result with a
    compare-and-set script (one atomic step in Redis); when another instance changed the
    record in between, it applies the rule again to the new record (at most
    :data:`MAX_ATTEMPTS` times within ``timeout`` seconds). So concurrent changes are
    counted exactly, whichever process makes them.

    Keys are ``<prefix>throttle:<namespace>:<SHA-256 of the value>``: no username or
    address appears in clear. Each key's TTL ends when its record expires (on the
    caller's clock, sent as a relative time), so no key outlives its use.

    Fail closed: a Redis error or time-out, too much contention, or a record that is not
    ours raises :class:`~dpopkit.storage.records.StoreError` (the caller answers 503);
    outages and recoveries are logged once each on ``dpopkit.storage`` (store
    ``throttle``).

    Args:
        client: a ``redis.Redis`` with a ``socket_timeout`` (see :meth:`from_url`).
        prefix: a namespace prepended to every key.
        timeout: seconds one change may take over all its attempts.

    Raises:
        ValueError: the client has no ``socket_timeout``.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        _require_socket_timeout(client)
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        #: outages and recoveries, logged on ``dpopkit.storage``
        self.health = StoreHealth("throttle")
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> RedisCounterStore:
        """Connect to ``url`` with bounded socket time-outs and no retries."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=redis.retry.Retry(NoBackoff(), 0),
        )
        return cls(client, prefix=prefix, timeout=timeout)

    def redis_key(self, key: str) -> str:
        """The Redis key of ``key`` (``namespace:value``): the value as a SHA-256 digest."""
        namespace, _, value = key.partition(":")
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}throttle:{namespace}:{digest}"

    def _failed(self, exc: BaseException) -> StoreError:
        self.health.failed(type(exc).__name__)
        return StoreError(f"the counter store failed ({type(exc).__name__})")

    def get(self, key: str, *, now: float) -> Record | None:
        """The live record of ``key``; see :meth:`~dpopkit.storage.counters.CounterStore.get`.

        Raises:
            StoreError: Redis failed or timed out.
        """
        try:
            value = self.client.get(self.redis_key(key))
        except _REDIS_ERRORS as exc:
            raise self._failed(exc) from exc
        self.health.ok()
        if value is None:
            return None
        record, expires_at = decode_entry(_as_bytes(value))
        return None if now > expires_at else record

    def change(self, key: str, update: Update, *, now: float) -> Record | None:
        """Apply ``update`` atomically across instances (compare-and-set, retried).

        Raises:
            StoreError: Redis failed or timed out, or the record kept changing under us.
        """
        name = self.redis_key(key)
        deadline = time.monotonic() + self.timeout
        try:
            current = _as_bytes(self.client.get(name) or b"")
            for attempt in range(MAX_ATTEMPTS):
                old = decode_entry(current) if current else None
                live = None if old is None or now > old[1] else old[0]
                entry = update(live)
                value = b"" if entry is None else encode_entry(entry)
                if value == current:
                    break  # nothing to write (a refusal leaves the record as it is)
                ttl = 1 if entry is None else max(1, math.ceil((entry[1] - now) * 1000))
                done, found = self._cas(keys=[name], args=[current, value, ttl])
                if done == 1:
                    break
                current = _as_bytes(found)
                if time.monotonic() > deadline:
                    raise StoreError("the counter store is too contended")
                # Another writer won: back off up to a few ms (jittered) before the next
                # try, so that writers contending for one key do not keep colliding.
                time.sleep(secrets.randbelow(1000 * min(attempt + 1, 8)) / 1e6)
            else:
                raise StoreError("the counter store is too contended")
        except _REDIS_ERRORS as exc:
            raise self._failed(exc) from exc
        self.health.ok()
        return None if entry is None else entry[0]

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()
