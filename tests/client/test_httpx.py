"""httpx and httpx2 DPoPAuth: generator-level flow and real servers on 127.0.0.1 (sync and async).

Every test runs twice, once per HTTP package: ``httpx`` with
:mod:`dpopkit.client.httpx`, and ``httpx2`` (the package the ``mcp`` 2.x SDK sends
through) with :mod:`dpopkit.client.httpx2`. The module-level names ``httpx``,
``DPoPAuth`` and ``dpop_error`` are swapped for the run, so each body drives the
package under test end to end.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from dpopkit import DPoPKey, MissingNonceError, NonceRetryExhaustedError, Reason
from dpopkit.client.flow import NonceCache
from dpopkit.client.httpx import DPoPAuth, dpop_error

from .helpers import claims_of
from .servers import Servers, issue_token


@pytest.fixture(autouse=True, params=["httpx", "httpx2"])
def http_package(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with ``httpx`` and with ``httpx2`` (one DPoPAuth, two packages)."""
    name: str = request.param
    adapter = importlib.import_module(f"dpopkit.client.{name}")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "httpx", importlib.import_module(name))
    monkeypatch.setattr(module, "DPoPAuth", adapter.DPoPAuth)
    monkeypatch.setattr(module, "dpop_error", adapter.dpop_error)
    return name


# -- the generator, driven by hand ---------------------------------------------------------------


def test_generator_nonce_retry_then_done(key: DPoPKey) -> None:
    """C-10: 401 use_dpop_nonce → the flow yields the same request with a new proof."""
    auth = DPoPAuth(key, token="AT")
    request = httpx.Request("GET", "https://api.example/items")
    flow = auth.sync_auth_flow(request)
    first = next(flow)
    assert first.headers["Authorization"] == "DPoP AT"
    jti1 = claims_of(first.headers["DPoP"])["jti"]
    challenge = httpx.Response(
        401,
        headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "N1"},
        request=request,
    )
    second = flow.send(challenge)
    claims = claims_of(second.headers["DPoP"])
    assert claims["nonce"] == "N1"
    assert claims["jti"] != jti1
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(200, request=request))


def test_generator_as_400_reads_body(key: DPoPKey) -> None:
    """C-10 at an AS: the 400 JSON body is read only because it may be use_dpop_nonce."""
    auth = DPoPAuth(key)
    request = httpx.Request("POST", "https://as.example/token", content=b"grant_type=x")
    flow = auth.sync_auth_flow(request)
    next(flow)
    stream = httpx.ByteStream(b'{"error":"use_dpop_nonce"}')
    response = httpx.Response(
        400, headers={"DPoP-Nonce": "N2", "Content-Type": "application/json"}, stream=stream
    )
    retried = flow.send(response)
    assert claims_of(retried.headers["DPoP"])["nonce"] == "N2"
    assert "Authorization" not in retried.headers


def test_generator_does_not_read_other_bodies(key: DPoPKey) -> None:
    """requires_response_body=False: a 200 stream is left unread."""
    auth = DPoPAuth(key, token="AT")
    request = httpx.Request("GET", "https://api.example/big")
    flow = auth.sync_auth_flow(request)
    next(flow)
    response = httpx.Response(200, headers={"DPoP-Nonce": "N3"}, stream=httpx.ByteStream(b"x"))
    with pytest.raises(StopIteration):
        flow.send(response)
    assert not response.is_stream_consumed
    assert auth.nonces.get("https://api.example") == "N3"


def test_generator_missing_nonce_raises(key: DPoPKey) -> None:
    auth = DPoPAuth(key, token="AT")
    request = httpx.Request("GET", "https://api.example/items")
    flow = auth.sync_auth_flow(request)
    next(flow)
    with pytest.raises(MissingNonceError):
        flow.send(httpx.Response(401, headers={"WWW-Authenticate": 'dpop error="use_dpop_nonce"'}))


def test_generator_streaming_body_not_resent(key: DPoPKey) -> None:
    """A non-replayable body is never resent; the 401 comes back with an error."""
    auth = DPoPAuth(key, token="AT")

    def chunks() -> Iterator[bytes]:
        yield b"part"

    request = httpx.Request("POST", "https://api.example/upload", content=chunks())
    flow = auth.sync_auth_flow(request)
    next(flow)
    response = httpx.Response(
        401, headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "N"}
    )
    with pytest.raises(StopIteration):
        flow.send(response)
    error = dpop_error(response)
    assert error is not None
    assert error.reason is Reason.BODY_NOT_REPLAYABLE
    # The nonce was still learned: the next request will carry it.
    assert auth.nonces.get("https://api.example") == "N"


def test_generic_auth_flow_without_body_reading(key: DPoPKey) -> None:
    auth = DPoPAuth(key, token="AT")
    request = httpx.Request("GET", "https://api.example/items")
    flow = auth.auth_flow(request)
    next(flow)
    unread = httpx.Response(
        400, headers={"Content-Type": "application/json"}, stream=httpx.ByteStream(b"{}")
    )
    with pytest.raises(StopIteration):
        flow.send(unread)


def test_repr_hides_token(key: DPoPKey) -> None:
    """C-23: no secrets in reprs."""
    text = repr(DPoPAuth(key, token="very-secret-token"))
    assert "very-secret-token" not in text
    assert "'d'" not in text


# -- real servers ---------------------------------------------------------------------------------


def make_auth(key: DPoPKey, token: str | None, **kw: object) -> DPoPAuth:
    return DPoPAuth(key, token=token, allow_insecure_http=True, **kw)  # type: ignore[arg-type]


def test_c9_c10_sync_client_against_rs_with_nonce(servers: Servers, key: DPoPKey) -> None:
    """C-9/C-10/C-12 end to end: first call → 401 use_dpop_nonce → retry → 200; next call 1 trip."""
    at = issue_token(servers, key.jkt)
    with httpx.Client(auth=make_auth(key, at)) as client:
        response = client.get(servers.state.base + "/api/items?x=1")
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [401]
        assert len(servers.state.rs_requests) == 2
        again = client.get(servers.state.base + "/api/items")
        assert again.status_code == 200
        assert again.history == []
    jtis = [r.get("jti") for r in servers.state.rs_requests if "jti" in r]
    assert len(jtis) == len(set(jtis)) == 2


def test_sync_post_bytes_body_is_resent(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)
    with httpx.Client(auth=make_auth(key, at)) as client:
        response = client.post(servers.state.base + "/api/upload", content=b"hello")
    assert response.status_code == 200
    assert response.json()["len"] == 5
    assert [r["body"] for r in servers.state.rs_requests] == [b"hello", b"hello"]


def test_streaming_upload_not_resent_against_server(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)

    def chunks() -> Iterator[bytes]:
        yield b"chunk"

    with httpx.Client(auth=make_auth(key, at)) as client:
        response = client.post(servers.state.base + "/api/upload", content=chunks())
    assert response.status_code == 401
    error = dpop_error(response)
    assert error is not None
    assert error.reason is Reason.BODY_NOT_REPLAYABLE
    assert len(servers.state.rs_requests) == 1


def test_streaming_upload_buffered_on_request(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)

    def chunks() -> Iterator[bytes]:
        yield b"chunk"

    auth = make_auth(key, at, buffer_request_body=True)
    with httpx.Client(auth=auth) as client:
        response = client.post(servers.state.base + "/api/upload", content=chunks())
    assert response.status_code == 200
    assert response.json()["len"] == 5


def test_sec114_server_new_nonce_every_time_sync(servers: Servers, key: DPoPKey) -> None:
    """SEC-114 / C-10: an always-challenging server → exactly 2 requests, then an error."""
    with (
        httpx.Client(auth=make_auth(key, "AT")) as client,
        pytest.raises(NonceRetryExhaustedError),
    ):
        client.get(servers.state.base + "/loop/new-nonce")
    assert len(servers.state.rs_requests) == 2


def test_sec114_same_nonce_sync(servers: Servers, key: DPoPKey) -> None:
    with (
        httpx.Client(auth=make_auth(key, "AT")) as client,
        pytest.raises(NonceRetryExhaustedError),
    ):
        client.get(servers.state.base + "/loop/same-nonce")
    assert len(servers.state.rs_requests) == 2


def test_sec113_missing_nonce_sync(servers: Servers, key: DPoPKey) -> None:
    with httpx.Client(auth=make_auth(key, "AT")) as client, pytest.raises(MissingNonceError):
        client.get(servers.state.base + "/loop/no-nonce")
    assert len(servers.state.rs_requests) == 1


def test_streamed_download_stays_streamed(servers: Servers, key: DPoPKey) -> None:
    nonces = NonceCache()
    with (
        httpx.Client(auth=make_auth(key, "AT", nonces=nonces)) as client,
        client.stream("GET", servers.state.base + "/stream") as response,
    ):
        assert response.status_code == 200
        assert not response.is_stream_consumed
        assert len(response.read()) == 100_000
    assert nonces.get(servers.state.base) == "from-stream"


def test_key_mismatch_is_final_invalid_token(servers: Servers, key: DPoPKey) -> None:
    """A token bound to another key: 401 invalid_token comes back, no loop (static token)."""
    at = issue_token(servers, DPoPKey.generate().jkt)
    with httpx.Client(auth=make_auth(key, at)) as client:
        response = client.get(servers.state.base + "/api/items")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.anyio
async def test_async_client_nonce_retry(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)
    async with httpx.AsyncClient(auth=make_auth(key, at)) as client:
        response = await client.get(servers.state.base + "/api/items")
        assert response.status_code == 200
        assert len(response.history) == 1
        response = await client.put(servers.state.base + "/api/items", json={"a": 1})
        assert response.status_code == 200
        assert response.history == []


@pytest.mark.anyio
async def test_async_loop_protection(servers: Servers, key: DPoPKey) -> None:
    async with httpx.AsyncClient(auth=make_auth(key, "AT")) as client:
        with pytest.raises(NonceRetryExhaustedError):
            await client.get(servers.state.base + "/loop/new-nonce")
        with pytest.raises(MissingNonceError):
            await client.get(servers.state.base + "/loop/no-nonce")


@pytest.mark.anyio
async def test_async_streaming_upload_not_resent(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)

    async def chunks() -> object:
        yield b"chunk"

    async with httpx.AsyncClient(auth=make_auth(key, at)) as client:
        response = await client.post(servers.state.base + "/api/upload", content=chunks())  # type: ignore[arg-type]
    assert response.status_code == 401
    error = dpop_error(response)
    assert error is not None
    assert error.reason is Reason.BODY_NOT_REPLAYABLE


@pytest.mark.anyio
async def test_async_streaming_upload_buffered_on_request(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunk"

    auth = make_auth(key, at, buffer_request_body=True)
    async with httpx.AsyncClient(auth=auth) as client:
        response = await client.post(servers.state.base + "/api/upload", content=chunks())
    assert response.status_code == 200
    assert response.json()["len"] == 5


@pytest.mark.anyio
async def test_async_as_400_use_dpop_nonce(servers: Servers, key: DPoPKey) -> None:
    """C-10 at an AS through AsyncClient: the 400 JSON body is read and the request resent."""
    auth = make_auth(key, None)
    form = {"grant_type": "client_credentials", "client_id": "public"}
    async with httpx.AsyncClient(auth=auth) as client:
        response = await client.post(servers.state.base + "/token", data=form)
    assert response.status_code == 200
    assert response.json()["token_type"] == "DPoP"
    assert [r.status_code for r in response.history] == [400]
