"""Auto-refresh: before exp, once after 401 invalid_token, one refresh for many waiters."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import anyio
import httpx
import pytest
import requests

from dpopkit import ClientError, DPoPKey, Reason
from dpopkit.client import httpx as dpop_httpx
from dpopkit.client import requests as dpop_requests
from dpopkit.client.tokens import (
    AsyncRefreshingToken,
    AsyncTokenClient,
    RefreshingToken,
    StaticToken,
    TokenClient,
    TokenSet,
)

from .servers import CLIENT_SECRET, Servers


def a_minute_later() -> float:
    """The clock of a client checking its tokens a minute after they were issued."""
    return time.time() + 60


def code_tokens(servers: Servers, key: DPoPKey) -> tuple[TokenClient, TokenSet]:
    client = TokenClient.from_issuer(
        servers.state.issuer,
        key=key,
        client_id="cli",
        client_secret=CLIENT_SECRET,
        allow_insecure_http=True,
    )
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb", scope="api")
    callback = httpx.get(request.url).headers["location"]
    return client, client.exchange_code(request, callback)


def refresh_requests(servers: Servers) -> list[dict[str, object]]:
    return [r for r in servers.state.token_requests if r["form"]["grant_type"] == "refresh_token"]


def test_refresh_before_exp(servers: Servers, key: DPoPKey) -> None:
    servers.state.expires_in = 90  # due 30 s (the margin) before it expires
    client, tokens = code_tokens(servers, key)
    servers.state.expires_in = 300
    source = RefreshingToken(client, tokens, clock=a_minute_later)
    with httpx.Client(auth=dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)) as c:
        assert c.get(servers.state.base + "/api/a").status_code == 200
        assert c.get(servers.state.base + "/api/b").status_code == 200
    assert source.refresh_count == 1
    assert servers.state.refresh_count == 1
    # The refresh request carried a proof by the same key (C-8): never a bare refresh token.
    (refresh,) = refresh_requests(servers)
    assert refresh["jkt"] == key.jkt
    assert source.tokens.access_token != tokens.access_token


def test_a_token_shorter_lived_than_the_margin_is_not_renewed_on_every_request(
    servers: Servers, key: DPoPKey
) -> None:
    """expires_in 20 with the default 30 s margin: due at half its lifetime, not at once."""
    servers.state.expires_in = 20
    client, tokens = code_tokens(servers, key)
    servers.state.expires_in = 300
    assert tokens.issued_at is not None
    assert tokens.expires_at is not None
    now = [tokens.issued_at]
    source = RefreshingToken(client, tokens, clock=lambda: now[0])
    for _ in range(5):
        assert source.get() == tokens.access_token
    assert source.refresh_count == 0
    now[0] = tokens.issued_at + 11  # past half of its 20 s
    renewed = source.get()
    assert renewed != tokens.access_token
    assert source.refresh_count == 1
    for _ in range(3):
        assert source.get() == renewed  # the new one is fresh again
    assert source.refresh_count == 1


def test_refresh_once_after_invalid_token(servers: Servers, key: DPoPKey) -> None:
    """A 401 invalid_token → one refresh and one resend; a second rejection is final."""
    client, tokens = code_tokens(servers, key)
    servers.state.tokens.pop(tokens.access_token)  # the RS no longer knows the token
    source = RefreshingToken(client, tokens)
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    with httpx.Client(auth=auth) as c:
        response = c.get(servers.state.base + "/api/a")
        assert response.status_code == 200
        assert source.refresh_count == 1
        servers.state.rs_reject_tokens = True  # every token refused: refresh once, then give up
        before = len(servers.state.rs_requests)
        response = c.get(servers.state.base + "/api/a")
        assert response.status_code == 401
        assert len(servers.state.rs_requests) - before == 2
    assert source.refresh_count == 2


def test_requests_refresh_once_after_invalid_token(servers: Servers, key: DPoPKey) -> None:
    client, tokens = code_tokens(servers, key)
    servers.state.tokens.pop(tokens.access_token)
    source = RefreshingToken(client, tokens)
    auth = dpop_requests.DPoPAuth(key, token=source, allow_insecure_http=True)
    response = requests.get(servers.state.base + "/api/a", auth=auth, timeout=10)
    assert response.status_code == 200
    assert source.refresh_count == 1
    assert [r.status_code for r in response.history][-1] == 401


def test_static_token_no_refresh_on_invalid_token(servers: Servers, key: DPoPKey) -> None:
    auth = dpop_httpx.DPoPAuth(key, token=StaticToken("unknown"), allow_insecure_http=True)
    with httpx.Client(auth=auth) as c:
        assert c.get(servers.state.base + "/api/a").status_code == 401
    assert len([r for r in servers.state.rs_requests if r.get("error") == "invalid_token"]) == 1


def test_client_credentials_token_renewed_without_refresh_token(
    servers: Servers, key: DPoPKey
) -> None:
    client = TokenClient.from_issuer(
        servers.state.issuer,
        key=key,
        client_id="cli",
        client_secret=CLIENT_SECRET,
        allow_insecure_http=True,
    )
    servers.state.expires_in = 5
    tokens = client.client_credentials(scope="s1", resource="https://api.example")
    servers.state.expires_in = 300
    source = RefreshingToken(client, tokens, clock=a_minute_later)
    assert source.current() is None
    fresh = source.get()
    assert fresh != tokens.access_token
    last = servers.state.token_requests[-1]["form"]
    assert last["grant_type"] == "client_credentials"
    assert last["scope"] == "s1"
    assert last["resource"] == "https://api.example"
    assert source.current() == fresh


def test_threads_share_one_refresh(servers: Servers, key: DPoPKey) -> None:
    servers.state.expires_in = 1
    client, tokens = code_tokens(servers, key)
    servers.state.expires_in = 300
    servers.state.refresh_delay = 0.2
    source = RefreshingToken(client, tokens, clock=a_minute_later)
    auth = dpop_requests.DPoPAuth(key, token=source, allow_insecure_http=True)
    statuses: list[int] = []
    barrier = threading.Barrier(10)

    def work() -> None:
        barrier.wait()
        statuses.append(
            requests.get(servers.state.base + "/api/t", auth=auth, timeout=10).status_code
        )

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 10
    assert servers.state.refresh_count == 1
    assert source.refresh_count == 1


@pytest.mark.anyio
async def test_50_concurrent_async_requests_one_refresh_distinct_jti(
    servers: Servers, key: DPoPKey
) -> None:
    """50 concurrent requests through one AsyncClient with an expiring token →
    exactly one refresh; every request carries a distinct jti."""
    servers.state.expires_in = 1
    client, tokens = await anyio.to_thread.run_sync(code_tokens, servers, key)
    servers.state.expires_in = 300
    servers.state.refresh_delay = 0.2
    source = RefreshingToken(client, tokens, clock=a_minute_later)
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(auth=auth, limits=limits, timeout=30) as c:

        async def one(i: int) -> None:
            response = await c.get(f"{servers.state.base}/api/items/{i}")
            statuses.append(response.status_code)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert time.monotonic() - started < 30
    assert statuses == [200] * 50
    assert servers.state.refresh_count == 1
    assert source.refresh_count == 1
    assert len(refresh_requests(servers)) == 1
    ok = [r for r in servers.state.rs_requests if "jti" in r]
    assert len(ok) == 50
    sent_jtis = [r["jti"] for r in ok]
    assert len(set(sent_jtis)) == 50
    assert {r["headers"]["authorization"] for r in ok} == {f"DPoP {source.tokens.access_token}"}


@pytest.mark.anyio
async def test_async_refresh_once_after_invalid_token(servers: Servers, key: DPoPKey) -> None:
    client, tokens = await anyio.to_thread.run_sync(code_tokens, servers, key)
    servers.state.tokens.pop(tokens.access_token)
    source = RefreshingToken(client, tokens)
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    async with httpx.AsyncClient(auth=auth) as c:
        response = await c.get(servers.state.base + "/api/a")
    assert response.status_code == 200
    assert source.refresh_count == 1
    assert [r.status_code for r in response.history][-1] == 401


def test_invalidate_by_many_waiters_refreshes_once(servers: Servers, key: DPoPKey) -> None:
    """Many requests rejected with the same token: the first renews, the rest reuse it."""
    client, tokens = code_tokens(servers, key)
    source = RefreshingToken(client, tokens)
    first = source.invalidate(tokens.access_token)
    second = source.invalidate(tokens.access_token)
    assert first is not None
    assert first == second != tokens.access_token
    assert source.refresh_count == 1
    assert first not in repr(source)


def test_unrenewable_token_is_not_retried(servers: Servers, key: DPoPKey) -> None:
    client, tokens = code_tokens(servers, key)
    bare = dataclasses.replace(tokens, refresh_token=None, grant="authorization_code")
    source = RefreshingToken(client, bare)
    assert source.invalidate(bare.access_token) is None
    expired = RefreshingToken(client, dataclasses.replace(bare, expires_at=0.0))
    assert expired.current() == bare.access_token  # nothing to renew with: used as is
    assert expired.get() == bare.access_token
    with pytest.raises(ValueError, match=r"."):
        StaticToken("")
    assert "tok" not in repr(StaticToken("tok"))


def test_urllib_sender_does_not_follow_redirects(servers: Servers) -> None:
    from dpopkit import RequestView
    from dpopkit.client.tokens import urllib_sender

    send = urllib_sender(timeout=5)
    response = send(RequestView(method="GET", url=servers.state.base + "/redirect/302"))
    assert response.status == 302
    with pytest.raises(ValueError, match=r"."):
        send(RequestView(method="GET", url="file:///etc/passwd"))


# -- the async twin: AsyncRefreshingToken on AsyncTokenClient --------------------------------------


async def async_code_tokens(servers: Servers, key: DPoPKey) -> tuple[AsyncTokenClient, TokenSet]:
    client = await AsyncTokenClient.from_issuer(
        servers.state.issuer,
        key=key,
        client_id="cli",
        client_secret=CLIENT_SECRET,
        sender=_httpx_async_sender,
        allow_insecure_http=True,
    )
    request = await client.authorization_request(redirect_uri="http://127.0.0.1/cb", scope="api")
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(request.url)).headers["location"]
    return client, await client.exchange_code(request, callback)


async def _httpx_async_sender(request: Any) -> Any:
    async with httpx.AsyncClient() as http:
        return await dpop_httpx.httpx_async_sender(http)(request)


@pytest.mark.anyio
async def test_c8_async_concurrent_requests_one_refresh_on_the_loop(
    servers: Servers, key: DPoPKey
) -> None:
    """C-8: 20 tasks, an expiring token: one refresh, awaited (no worker thread), same key."""
    servers.state.expires_in = 1
    client, tokens = await async_code_tokens(servers, key)
    servers.state.expires_in = 300
    source = AsyncRefreshingToken(client, tokens, clock=a_minute_later)
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    statuses: list[int] = []
    async with httpx.AsyncClient(auth=auth, timeout=30) as c:

        async def one(i: int) -> None:
            statuses.append((await c.get(f"{servers.state.base}/api/items/{i}")).status_code)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert statuses == [200] * 20
    assert source.refresh_count == 1
    (refresh,) = refresh_requests(servers)
    assert refresh["jkt"] == key.jkt


@pytest.mark.anyio
async def test_c8_async_refresh_once_after_invalid_token(servers: Servers, key: DPoPKey) -> None:
    """C-8: a 401 invalid_token renews once through ainvalidate, then the retry passes."""
    client, tokens = await async_code_tokens(servers, key)
    servers.state.tokens.pop(tokens.access_token)
    source = AsyncRefreshingToken(client, tokens)
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    async with httpx.AsyncClient(auth=auth) as c:
        response = await c.get(servers.state.base + "/api/a")
    assert response.status_code == 200
    assert source.refresh_count == 1


def test_async_source_refuses_a_sync_client(servers: Servers, key: DPoPKey) -> None:
    """An AsyncRefreshingToken in a synchronous client is a configuration error, typed."""
    client, tokens = code_tokens(servers, key)
    source = AsyncRefreshingToken(client, tokens)  # type: ignore[arg-type]
    with pytest.raises(ClientError) as caught:
        source.get()
    assert caught.value.reason is Reason.CONFIGURATION
