"""Password guessing and scrypt floods at the authorization server.

The login form is throttled per username and per client address: after a few
failures each further one imposes a doubling delay during which no password is
checked (429 page with ``Retry-After``), then a temporary lockout in which the
right password is refused too; the lockout expires. Every scrypt computation
(login passwords, client secrets, registration) goes through one shared limiter:
when it is busy the answer is 503 ``temporarily_unavailable`` (or the login page
with a 503 error), never a hang. Failures are logged with a reason, never the
password. The clock is injected: nothing sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from dpopkit import Headers, RequestView, ResponseView
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.server.config import ConfigError, build_server, load_config
from dpopkit.server.registration import handle_register
from dpopkit.server.throttle import SCRYPT_LIMITER, LoginThrottle
from dpopkit.storage.sql import SQLGrantStore

from .conftest import (
    ALICE_PASSWORD,
    AS,
    ISSUER,
    USERS,
    Clock,
    authorize_params,
    error_of,
    form_request,
    hidden_fields,
    make_service,
)

WRONG = "Wr0ng-Guess-Never-Logged"


class Browser:
    """One sign-in page opened from ``address``; posts credentials to it."""

    def __init__(self, endpoint: AuthorizationEndpoint, address: str) -> None:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        url = ISSUER + "/authorize?" + urlencode(authorize_params("public", challenge))
        page = endpoint.handle(RequestView(method="GET", url=url, client_address=address))
        assert page.status == 200, page.body
        self.endpoint = endpoint
        self.address = address
        self.cookie = (page.header("Set-Cookie") or "").split(";")[0]
        self.fields = hidden_fields(page.body.decode())

    def login(self, username: str, password: str) -> ResponseView:
        request = form_request(
            ISSUER + "/authorize",
            {**self.fields, "username": username, "password": password, "action": "login"},
            headers=[("Cookie", self.cookie)],
        )
        view = RequestView(
            method=request.method,
            url=request.url,
            headers=request.headers,
            body=request.body,
            client_address=self.address,
        )
        return self.endpoint.handle(view)


def _consented(resp: ResponseView) -> bool:
    return resp.status == 200 and b'name="step" value="consent"' in resp.body


def _wrong_password_page(resp: ResponseView) -> bool:
    """The login form again, with an error and no consent step."""
    page = resp.body.decode()
    return resp.status == 200 and 'value="login"' in page and 'role="alert"' in page


@pytest.fixture
def endpoint(as_: AS) -> AuthorizationEndpoint:
    return AuthorizationEndpoint(as_.service, ConfigUsers(USERS))


def _fail_until_locked(browser: Browser, clock: Clock, username: str) -> list[int]:
    """Wrong passwords, waiting out each delay on the clock, until the lockout."""
    waits: list[int] = []
    for _ in range(40):
        resp = browser.login(username, WRONG)
        if resp.status == 429:
            wait = int(resp.header("Retry-After") or "0")
            if wait > 60:
                return [*waits, wait]
            waits.append(wait)
            clock.now += wait
            continue
        assert resp.status == 200
        assert _wrong_password_page(resp)
    raise AssertionError("never locked")


def test_hd3_forty_wrong_then_right_is_refused(
    endpoint: AuthorizationEndpoint, clock: Clock
) -> None:
    """HD-3: 40 wrong passwords in one interaction, then the right one: refused (429),
    the password is not even checked; the page keeps working afterwards."""
    browser = Browser(endpoint, "192.0.2.10")
    statuses = [browser.login("alice", WRONG).status for _ in range(40)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses
    right = browser.login("alice", ALICE_PASSWORD)
    assert right.status == 429
    assert not _consented(right)


def test_hd3_growing_delays_then_lockout_that_expires(
    endpoint: AuthorizationEndpoint, clock: Clock
) -> None:
    """HD-3: delays double after the free failures, then a lockout refuses even the
    right password; once it has run out the right password is accepted."""
    browser = Browser(endpoint, "192.0.2.11")
    waits = _fail_until_locked(browser, clock, "alice")
    assert waits[:-1] == sorted(waits[:-1])  # growing
    assert waits[:3] == [1, 2, 4]
    assert waits[-1] == 900  # the lockout
    locked_at = clock.now
    assert browser.login("alice", ALICE_PASSWORD).status == 429
    clock.now = locked_at + 899
    assert Browser(endpoint, "192.0.2.11").login("alice", ALICE_PASSWORD).status == 429
    clock.now = locked_at + 901
    assert _consented(Browser(endpoint, "192.0.2.11").login("alice", ALICE_PASSWORD))


def test_hd3_username_throttled_across_addresses(
    endpoint: AuthorizationEndpoint, clock: Clock
) -> None:
    """HD-3: guessing one user's password from many addresses still locks that user."""
    for i in range(40):
        browser = Browser(endpoint, f"198.51.100.{i}")
        resp = browser.login("alice", WRONG)
        if resp.status == 429:
            wait = int(resp.header("Retry-After") or "0")
            if wait > 60:
                break
            clock.now += wait
    fresh = Browser(endpoint, "203.0.113.99")
    assert fresh.login("alice", ALICE_PASSWORD).status == 429


def test_hd3_address_throttled_across_usernames(
    endpoint: AuthorizationEndpoint, clock: Clock
) -> None:
    """HD-3: spraying many usernames from one address throttles that address; another
    address signs the real user in."""
    browser = Browser(endpoint, "192.0.2.12")
    throttled = False
    for i in range(40):
        resp = browser.login(f"user{i}", WRONG)
        if resp.status == 429:
            throttled = True
            break
    assert throttled
    assert browser.login("alice", ALICE_PASSWORD).status == 429
    assert _consented(Browser(endpoint, "192.0.2.13").login("alice", ALICE_PASSWORD))


def test_hd3_success_resets_the_username(endpoint: AuthorizationEndpoint, clock: Clock) -> None:
    """HD-3: a successful sign-in forgets the user's earlier failures."""
    browser = Browser(endpoint, "192.0.2.14")
    for _ in range(3):
        assert _wrong_password_page(browser.login("alice", WRONG))
    assert _consented(browser.login("alice", ALICE_PASSWORD))
    again = Browser(endpoint, "192.0.2.15")
    for _ in range(3):
        assert _wrong_password_page(again.login("alice", WRONG))


def test_hd3_failures_logged_with_reason_never_the_password(
    endpoint: AuthorizationEndpoint, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """HD-3: every refusal is one log line with its reason; no password ever appears."""
    caplog.set_level(logging.INFO, logger="dpopkit")
    browser = Browser(endpoint, "192.0.2.16")
    for _ in range(6):
        browser.login("alice", WRONG)
    browser.login("alice", ALICE_PASSWORD)
    text = caplog.text
    assert "reason=bad_credentials" in text
    assert "reason=throttled" in text
    assert WRONG not in text
    assert ALICE_PASSWORD not in text


def test_hd3_throttle_memory_is_bounded() -> None:
    """HD-3: the throttle remembers at most ``max_keys`` keys (oldest dropped)."""
    throttle = LoginThrottle(max_keys=100, clock=lambda: 1000.0)
    for i in range(1000):
        throttle.failure(username=f"u{i}", address=f"a{i}")
    assert len(throttle._keys) <= 100


@pytest.fixture
def busy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every slot of the shared scrypt limiter is held by someone else."""
    monkeypatch.setattr(SCRYPT_LIMITER, "wait", 0.01)
    held = 0
    try:
        while SCRYPT_LIMITER._sem.acquire(blocking=False):
            held += 1
        assert held == SCRYPT_LIMITER.slots
        yield
    finally:
        for _ in range(held):
            SCRYPT_LIMITER._sem.release()


def test_hd3_busy_scrypt_at_token_endpoint_is_503(
    store: SQLGrantStore, clock: Clock, busy: None
) -> None:
    """HD-3: client-secret checking waits for a scrypt slot only briefly, then 503
    ``temporarily_unavailable`` with ``Retry-After`` (RFC 6749 §5.2 shape)."""
    as_ = AS(make_service(store, clock), store, clock)
    resp = as_.token({"grant_type": "client_credentials"}, proof=False)
    assert error_of(resp) == "temporarily_unavailable"
    assert resp.status == 503
    assert resp.header("Retry-After") is not None


def test_hd3_busy_scrypt_at_login_is_a_503_page(
    endpoint: AuthorizationEndpoint, busy: None
) -> None:
    """HD-3: the login form says the service is busy (503), and the attempt does not
    count as a failure."""
    browser = Browser(endpoint, "192.0.2.17")
    resp = browser.login("alice", ALICE_PASSWORD)
    assert resp.status == 503
    assert resp.header("Retry-After") == "1"
    assert endpoint.throttle.retry_after(username="alice", address="192.0.2.17") == 0


def test_hd3_busy_scrypt_at_registration_is_503(
    store: SQLGrantStore, clock: Clock, busy: None
) -> None:
    """HD-3: hashing a new client's secret takes a slot of the same limiter."""
    service = make_service(
        store,
        clock,
        registration_enabled=True,
        registration_allowed_grant_types=("client_credentials",),
    )
    resp = handle_register(
        service,
        RequestView(
            method="POST",
            url=ISSUER + "/register",
            headers=Headers([("Content-Type", "application/json")]),
            body=b'{"grant_types": ["client_credentials"]}',
        ),
    )
    assert error_of(resp) == "temporarily_unavailable"
    assert resp.status == 503


def test_hd3_slot_released_after_work(store: SQLGrantStore, clock: Clock) -> None:
    """HD-3: a finished computation gives its slot back (no leak under errors)."""
    as_ = AS(make_service(store, clock), store, clock)
    for _ in range(3):
        bad = as_.token(
            {"grant_type": "client_credentials"},
            client=None,
            headers=[("Authorization", "Basic " + base64.b64encode(b"conf:nope").decode())],
            proof=False,
        )
        assert error_of(bad) == "invalid_client"
    free = 0
    while SCRYPT_LIMITER._sem.acquire(blocking=False):
        free += 1
    for _ in range(free):
        SCRYPT_LIMITER._sem.release()
    assert free == SCRYPT_LIMITER.slots


def test_hd3_login_settings_from_toml(tmp_path: Path, store: SQLGrantStore, clock: Clock) -> None:
    """HD-3: ``[login]`` in the TOML file sets the budgets the endpoint enforces; an
    inconsistent pair is one ConfigError line."""
    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://as.test"\n[login]\nfree_failures = 0\nlockout_failures = 2\n'
        "lockout_seconds = 60\n"
    )
    settings = load_config(path, data_dir=tmp_path).settings
    assert settings["login_lockout_failures"] == 2
    service = make_service(store, clock, **{k: v for k, v in settings.items() if k != "issuer"})
    endpoint = AuthorizationEndpoint(service, ConfigUsers(USERS))
    browser = Browser(endpoint, "192.0.2.30")
    assert _wrong_password_page(browser.login("alice", WRONG))
    clock.now += 1
    assert _wrong_password_page(browser.login("alice", WRONG))
    locked = browser.login("alice", ALICE_PASSWORD)
    assert locked.status == 429
    assert locked.header("Retry-After") == "60"
    clock.now += 61
    assert _consented(Browser(endpoint, "192.0.2.30").login("alice", ALICE_PASSWORD))
    path.write_text('issuer = "http://as.test"\n[login]\nfree_failures = 5\nlockout_failures = 2\n')
    with pytest.raises(ConfigError):
        build_server(load_config(path, data_dir=tmp_path))


def test_hd3_long_usernames_do_not_grow_memory() -> None:
    """HD-3: a throttle key never holds a huge submitted username."""
    throttle = LoginThrottle(clock=lambda: 1000.0)
    throttle.failure(username="x" * 60000, address="192.0.2.31")
    assert max(len(k) for k in throttle._keys) < 200
    assert throttle.retry_after(username="x" * 60000, address=None) == 0


def test_hd3_scrypt_flood_never_exceeds_the_slots(
    store: SQLGrantStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HD-3: many concurrent wrong client secrets never run more scrypt computations at
    once than the shared limiter has slots; each request ends promptly with
    ``invalid_client`` or 503 ``temporarily_unavailable``, none hangs."""
    real = hashlib.scrypt
    lock = threading.Lock()
    running = 0
    peak = 0

    def counting_scrypt(*args: Any, **kwargs: Any) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.02)  # widen the window in which computations could overlap
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    as_ = AS(make_service(store, clock), store, clock)

    def attempt(i: int) -> tuple[str, float]:
        started = time.monotonic()
        auth = base64.b64encode(f"conf:wrong-{i}".encode()).decode()
        resp = as_.token(
            {"grant_type": "client_credentials"},
            client=None,
            headers=[("Authorization", "Basic " + auth)],
            proof=False,
        )
        return error_of(resp), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(attempt, range(24)))
    assert peak <= SCRYPT_LIMITER.slots
    assert {code for code, _ in results} <= {"invalid_client", "temporarily_unavailable"}
    assert "invalid_client" in {code for code, _ in results}
    assert max(elapsed for _, elapsed in results) < SCRYPT_LIMITER.wait + 2.0
