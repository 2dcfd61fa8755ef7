"""The login throttle (HD-3) and the ``/register`` limit (HD-2) shared through Redis.

Several processes of one authorization server count against one budget when their
throttles share a :class:`~dpopkit.storage.redis.RedisCounterStore`: each instance
here has its own Redis client (its own connections), as separate processes would,
and all talk to the real Redis under a prefix of their own. The same rules run over
the in-process :class:`~dpopkit.storage.counters.MemoryCounterStore`, which is the
reference: a shared deployment must refuse exactly where one process would.
A Redis that stops answering (a freeze proxy in front of it) makes the sign-in and
``/register`` answer 503 with ``Retry-After``: never a 500, never a sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
from starlette.types import ASGIApp

from dpopkit import Headers, RequestView, ResponseView
from dpopkit.errors import Reason, ServerConfigurationError
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.server.config import build_server, load_config
from dpopkit.server.registration import handle_register, registration_rate_limiter
from dpopkit.server.service import ServerSettings, TokenService
from dpopkit.server.throttle import LoginThrottle, RateLimiter
from dpopkit.storage.counters import (
    CounterStore,
    MemoryCounterStore,
    decode_entry,
    encode_entry,
)
from dpopkit.storage.records import StoreError
from dpopkit.storage.redis import RedisCounterStore, RedisReplayCache
from dpopkit.storage.sql import SQLGrantStore
from tests.conftest import delete_redis_prefix
from tests.storage.freeze_proxy import frozen_proxy

from .conftest import (
    ALICE_PASSWORD,
    ISSUER,
    USERS,
    Clock,
    authorize_params,
    error_of,
    form_request,
    hidden_fields,
    make_service,
)

pytestmark = pytest.mark.redis

WRONG = "Wr0ng-Guess"


@pytest.fixture
def prefix(redis_url: str, unique_prefix: str) -> Iterator[str]:
    """This test's key prefix; its keys are deleted afterwards."""
    yield f"{unique_prefix}:"
    delete_redis_prefix(redis_url, f"{unique_prefix}:")


@pytest.fixture
def instances(redis_url: str, prefix: str) -> Iterator[Callable[[], RedisCounterStore]]:
    """Makes a store per instance: a client (connections) of its own, one shared prefix."""
    made: list[RedisCounterStore] = []

    def make() -> RedisCounterStore:
        made.append(RedisCounterStore.from_url(redis_url, prefix=prefix))
        return made[-1]

    yield make
    for store in made:
        store.close()


def _keys(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


def _throttle(
    state: CounterStore,
    clock: Clock,
    *,
    free_failures: int,
    lockout_failures: int,
    lockout_seconds: float = 900.0,
) -> LoginThrottle:
    return LoginThrottle(
        free_failures=free_failures,
        lockout_failures=lockout_failures,
        lockout_seconds=lockout_seconds,
        clock=clock,
        state=state,
    )


def _run(throttles: list[LoginThrottle], clock: Clock, attempts: int) -> list[float]:
    """Failed sign-ins for alice from one address, round robin over ``throttles``; each
    attempt waits out the current delay first. The waits seen before each attempt."""
    waits: list[float] = []
    for i in range(attempts):
        throttle = throttles[i % len(throttles)]
        wait = throttle.retry_after(username="alice", address="192.0.2.1")
        waits.append(wait)
        if wait > 60:
            break
        clock.now += wait
        throttle.failure(username="alice", address="192.0.2.1")
    return waits


def test_hd3_failures_split_over_two_instances_lock_like_one(
    instances: Callable[[], RedisCounterStore], now: float
) -> None:
    """HD-3 (RFC 6749 §10.10): wrong passwords counted by two throttles that share Redis
    give the same delays and lock the account at the same count as one in-process
    throttle; the lock is then seen by both instances."""
    one_clock, clock = Clock(now), Clock(now)

    def make(state: CounterStore, on: Clock) -> LoginThrottle:
        return _throttle(state, on, free_failures=2, lockout_failures=6, lockout_seconds=300.0)

    alone = _run([make(MemoryCounterStore(), one_clock)], one_clock, 20)
    a, b = make(instances(), clock), make(instances(), clock)
    shared = _run([a, b], clock, 20)
    assert shared == alone
    assert alone[-1] == 300.0  # locked after lockout_failures
    assert len(alone) == 7  # six failures, then the lockout
    for throttle in (a, b):
        assert throttle.retry_after(username="alice", address=None) == 300.0
    clock.now += 301
    assert a.retry_after(username="alice", address="192.0.2.1") == 0


def test_hd3_concurrent_failures_from_threads_are_counted_exactly(
    instances: Callable[[], RedisCounterStore], now: float
) -> None:
    """HD-3: 120 failures from 12 threads over two instances at once: the shared count is
    exactly 120 for the username and for the address (compare-and-set, no lost update)."""
    clock = Clock(now)
    stores = [instances(), instances()]
    throttles = [
        _throttle(store, clock, free_failures=500, lockout_failures=1000) for store in stores
    ]

    def fail(i: int) -> None:
        for _ in range(10):
            throttles[i % 2].failure(username="alice", address="192.0.2.2")

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(fail, range(12)))
    for key in ("login:u:alice", "login:a:192.0.2.2"):
        record = stores[0].get(key, now=clock.now)
        assert record is not None
        assert record[0] == 120


def test_hd2_concurrent_registrations_never_exceed_the_limit(
    instances: Callable[[], RedisCounterStore], now: float
) -> None:
    """HD-2 (RFC 7591 §5): 60 registrations from one address at once over two instances:
    exactly ``limit`` (25) are allowed, every other one is told to wait."""
    clock = Clock(now)
    limiters = [
        RateLimiter(limit=25, window=3600.0, clock=clock, state=instances()) for _ in range(2)
    ]
    barrier = threading.Barrier(12)

    def hit(i: int) -> list[int]:
        barrier.wait()
        return [limiters[i % 2].hit("192.0.2.3") for _ in range(5)]

    with ThreadPoolExecutor(max_workers=12) as pool:
        waits = [w for chunk in pool.map(hit, range(12)) for w in chunk]
    assert waits.count(0) == 25
    assert all(w == 3600 for w in waits if w)


def test_hd2_registration_limit_shared_by_two_instances_refuses_at_the_same_count(
    instances: Callable[[], RedisCounterStore], now: float
) -> None:
    """HD-2 (RFC 7591 §5): ``registration_rate_limit`` per address and hour, counted
    across two instances, refuses the same request as one instance does; another
    address has its own budget; the slot comes back when the window has passed."""
    settings = ServerSettings(issuer=ISSUER, registration_rate_limit=3)
    one_clock, clock = Clock(now), Clock(now)
    alone = registration_rate_limiter(settings, clock=one_clock)
    a = registration_rate_limiter(settings, clock=clock, counters=instances())
    b = registration_rate_limiter(settings, clock=clock, counters=instances())
    expected = []
    for _ in range(5):
        expected.append(alone.hit("192.0.2.4"))
        one_clock.now += 10
    shared = []
    for limiter in (a, b, a, b, a):
        shared.append(limiter.hit("192.0.2.4"))
        clock.now += 10
    assert shared == expected == [0, 0, 0, 3570, 3560]
    assert b.hit("192.0.2.5") == 0
    clock.now = now + 3600
    assert a.hit("192.0.2.4") == 0  # the first slot came back
    assert b.hit("192.0.2.4") == 10  # the next one: when the second ends


def test_hd3_ttl_ends_the_record_in_redis(
    instances: Callable[[], RedisCounterStore], redis_url: str, prefix: str, now: float
) -> None:
    """HD-3: every key carries a TTL that ends with its record (``forget_after`` after
    the last failure): Redis drops it and the count starts afresh; nothing grows."""
    store = instances()
    clock = Clock(now)  # the records' own times; Redis counts their TTLs in real time
    forget_after = 2.0
    throttle = LoginThrottle(
        free_failures=1, lockout_failures=5, forget_after=forget_after, clock=clock, state=store
    )
    throttle.failure(username="alice", address="192.0.2.6")
    throttle.failure(username="alice", address="192.0.2.6")
    client = redis.Redis.from_url(redis_url)
    try:
        names = [store.redis_key("login:u:alice"), store.redis_key("login:a:192.0.2.6")]
        ttls = [client.pttl(name) for name in names]  # right after the write
        assert all(0 < ttl <= forget_after * 1000 for ttl in ttls), ttls
        assert sorted(name.encode() for name in names) == _keys(redis_url, prefix)
        assert throttle.retry_after(username="alice", address=None) == 1.0
        deadline = time.monotonic() + 30  # the TTL, with room for a busy host
        while _keys(redis_url, prefix):
            assert time.monotonic() < deadline, "Redis kept a record past its TTL"
            time.sleep(0.1)
    finally:
        client.close()
    assert throttle.retry_after(username="alice", address="192.0.2.6") == 0
    throttle.failure(username="alice", address="192.0.2.6")
    assert throttle.retry_after(username="alice", address="192.0.2.6") == 0  # one free failure
    record = store.get("login:u:alice", now=clock.now)
    assert record is not None
    assert record[0] == 1


def test_hd3_forgetting_follows_the_throttle_clock(
    instances: Callable[[], RedisCounterStore], now: float
) -> None:
    """HD-3: a record past ``forget_after`` on the throttle's clock is not counted, even
    while Redis still holds it; a success forgets the username at once."""
    clock = Clock(now)
    throttle = _throttle(instances(), clock, free_failures=1, lockout_failures=3)
    throttle.failure(username="alice", address=None)
    throttle.failure(username="alice", address=None)
    assert throttle.retry_after(username="alice", address=None) == 1.0
    clock.now += 3601
    assert throttle.retry_after(username="alice", address=None) == 0
    throttle.failure(username="alice", address=None)
    assert throttle.retry_after(username="alice", address=None) == 0  # count restarted
    throttle.failure(username="alice", address=None)
    assert throttle.retry_after(username="alice", address=None) == 1.0
    throttle.success(username="alice")
    assert throttle.retry_after(username="alice", address=None) == 0


def test_hd3_key_names_are_digests(
    instances: Callable[[], RedisCounterStore], redis_url: str, prefix: str
) -> None:
    """HD-3: no username or address is stored in clear in a Redis key name."""
    username = "alice.secret-name@example.com"
    throttle = LoginThrottle(state=instances())
    throttle.failure(username=username, address="198.51.100.77")
    RateLimiter(limit=5, window=60.0, state=instances(), name="register").hit("198.51.100.78")
    keys = [key.decode() for key in _keys(redis_url, prefix)]
    assert len(keys) == 3
    for key in keys:
        assert key.startswith(prefix + "throttle:")
        assert "alice" not in key
        assert "198.51.100" not in key
        assert len(key.rsplit(":", 1)[1]) == 64  # SHA-256, hex


def test_counter_record_format_round_trips_and_refuses_garbage() -> None:
    """A record read back is the record written; a value that is not one is a store
    error (fail closed), never an empty record."""
    entry = ((3.0, 1700000000.25, 0.1), 1700003600.5)
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(encode_entry(((), 5.0))) == ((), 5.0)
    for bad in (b"", b"x;1", b"1;a", b"nan;1", "é;1".encode(), b"1;1," + b"1," * 2000):
        with pytest.raises(StoreError):
            decode_entry(bad)
    with pytest.raises(ValueError):
        encode_entry(((float("inf"),), 1.0))


# -- an outage ------------------------------------------------------------------------------


def _login(endpoint: AuthorizationEndpoint, address: str, password: str) -> ResponseView:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    url = ISSUER + "/authorize?" + urlencode(authorize_params("public", challenge))
    page = endpoint.handle(RequestView(method="GET", url=url, client_address=address))
    assert page.status == 200
    cookie = (page.header("Set-Cookie") or "").split(";")[0]
    fields = hidden_fields(page.body.decode())
    request = form_request(
        ISSUER + "/authorize",
        {**fields, "username": "alice", "password": password, "action": "login"},
        headers=[("Cookie", cookie)],
    )
    view = RequestView(
        method="POST",
        url=request.url,
        headers=request.headers,
        body=request.body,
        client_address=address,
    )
    return endpoint.handle(view)


def _consented(resp: ResponseView) -> bool:
    return resp.status == 200 and b'name="step" value="consent"' in resp.body


def _register(service_store: SQLGrantStore, clock: Clock, limiter: RateLimiter) -> ResponseView:
    service = make_service(
        service_store,
        clock,
        registration_enabled=True,
        registration_allowed_grant_types=("client_credentials",),
    )
    return handle_register(
        service,
        RequestView(
            method="POST",
            url=ISSUER + "/register",
            headers=Headers([("Content-Type", "application/json")]),
            body=b'{"grant_types": ["client_credentials"]}',
            client_address="192.0.2.9",
        ),
        limiter=limiter,
    )


#: The throttle store's time-out while Redis is frozen.
FROZEN_TIMEOUT = 0.5
#: Scheduling slack on a busy machine, on top of the time-out of the one store call that
#: fails; far below FROZEN_OUTAGE, so a call that waited for the thaw cannot pass.
FROZEN_SLACK = 4.0
#: How long Redis stays frozen at most (it thaws earlier once the refusals are checked).
FROZEN_OUTAGE = 30.0


def _timed(call: Callable[[], ResponseView]) -> tuple[ResponseView, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_hd3_frozen_redis_refuses_sign_in_and_registration_with_503(
    redis_url: str, prefix: str, store: SQLGrantStore, clock: Clock
) -> None:
    """HD-3, HD-2 (fail closed, as for the replay store, SEC-80): when the throttle's Redis
    stops answering, the right password is not accepted: the sign-in page answers 503
    ``store_unavailable`` with ``Retry-After`` within the store time-out, and
    ``/register`` answers 503 ``temporarily_unavailable``; both work again once Redis
    answers."""
    with frozen_proxy(redis_url, 6379) as (proxy, url):
        counters = RedisCounterStore.from_url(url, prefix=prefix, timeout=FROZEN_TIMEOUT)
        try:
            service = make_service(store, clock)
            endpoint = AuthorizationEndpoint(service, ConfigUsers(USERS), counters=counters)
            limiter = registration_rate_limiter(service.settings, clock=clock, counters=counters)
            assert _consented(_login(endpoint, "192.0.2.8", ALICE_PASSWORD))  # warm
            # A call that waited for Redis instead of its time-out is released at the thaw
            # (and then fails its bound), so the test ends either way.
            proxy.freeze(thaw_after=FROZEN_OUTAGE)
            refused, elapsed = _timed(lambda: _login(endpoint, "192.0.2.8", ALICE_PASSWORD))
            assert elapsed < FROZEN_TIMEOUT + FROZEN_SLACK
            assert refused.status == 503
            assert refused.reason == Reason.STORE_UNAVAILABLE.value
            assert refused.header("Retry-After") == "1"
            assert not _consented(refused)
            wrong, elapsed = _timed(lambda: _login(endpoint, "192.0.2.8", WRONG))
            assert elapsed < FROZEN_TIMEOUT + FROZEN_SLACK
            assert wrong.status == 503
            assert wrong.reason == Reason.STORE_UNAVAILABLE.value
            registered, elapsed = _timed(lambda: _register(store, clock, limiter))
            assert elapsed < FROZEN_TIMEOUT + FROZEN_SLACK
            assert error_of(registered) == "temporarily_unavailable"
            assert registered.header("Retry-After") == "1"
            assert counters.health.down
            proxy.thaw()
            assert _consented(_login(endpoint, "192.0.2.8", ALICE_PASSWORD))
            assert _register(store, clock, limiter).status == 201
            assert not counters.health.down
        finally:
            counters.close()


def test_hd2_registration_limit_fits_a_shared_record(
    instances: Callable[[], RedisCounterStore],
) -> None:
    """HD-2: each registration in the window is one number of the shared record, so the
    setting is bounded (1..1000, a configuration error beyond) and a shared limiter
    refuses a limit it could not hold; the in-process one takes any."""
    with pytest.raises(ServerConfigurationError) as caught:
        ServerSettings(issuer=ISSUER, registration_rate_limit=1001)
    assert caught.value.reason == Reason.CONFIGURATION
    assert ServerSettings(issuer=ISSUER, registration_rate_limit=1000).registration_rate_limit
    with pytest.raises(ValueError):
        RateLimiter(limit=5000, window=60.0, state=instances())
    assert RateLimiter(limit=5000, window=60.0).hit("192.0.2.10") == 0


def test_build_server_releases_the_redis_client_when_a_later_step_fails(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    """HD-3: the throttle shares the Redis replay cache's client, and ``build_server``
    closes it when a step after opening it fails."""
    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://127.0.0.1:8000"\n'
        f'replay_url = "{redis_url}"\nreplay_prefix = "{prefix}"\n'
    )
    built: list[TokenService] = []

    def failing_mounts(service: TokenService) -> list[tuple[str, ASGIApp]]:
        built.append(service)
        now = time.time()
        assert service.replay.check_and_store("warm", now + 60, now=now)  # one connection
        raise RuntimeError("a mount that cannot be built")

    with pytest.raises(RuntimeError):
        build_server(load_config(path, data_dir=tmp_path / "d"), mounts=failing_mounts)
    replay = built[0].replay
    assert isinstance(replay, RedisReplayCache)
    pool = replay.client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections
    assert all(connection._sock is None for connection in connections)
