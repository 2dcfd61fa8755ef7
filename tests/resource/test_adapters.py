"""Attack families A, H, I, N and adapter behaviour, through ASGI (asyncio, trio) and WSGI."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, ProofPolicy, SecurityWarning, ServerConfigurationError
from dpopkit.resource import ProtectedResourceMetadata, ProxyTrust
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    ORIGIN,
    Build,
    Calls,
    Clock,
    Issuer,
    asgi_app,
    dpop_headers,
    wsgi_app,
)

# --- I: replay -----------------------------------------------------------------------------


def test_sec71_replayed_proof_rejected(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build()
    headers = dpop_headers(key, issuer.token(jkt=key.jkt))
    assert rs.request("GET", "/hello", headers).status_code == 200
    again = rs.request("GET", "/hello", headers)
    assert again.status_code == 401
    assert rs.guard.metrics.snapshot()["rejected"] == {"replayed_jti": 1}
    assert rs.calls.count == 1


@pytest.mark.anyio
async def test_sec74_concurrent_copies_exactly_one_accepted(issuer: Issuer, key: DPoPKey) -> None:
    """SEC-74 (TOCTOU): 50 concurrent copies of one request -> exactly one 200.

    Runs on asyncio and trio through the anyio pytest plugin (``anyio_backend``).
    """
    calls = Calls()
    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
    )
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
    headers = dpop_headers(key, issuer.token(jkt=key.jkt))
    statuses: list[int] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:

        async def one() -> None:
            statuses.append((await client.get("/hello", headers=headers)).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert sorted(statuses) == [200] + [401] * 49
    assert calls.count == 1


# --- H: htu and how the expected URL is derived ------------------------------------------


def test_sec69_host_header_is_not_trusted(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """SEC-69: the expected htu comes from public_origin, never from Host/X-Forwarded-Host."""
    rs = build()
    token = issuer.token(jkt=key.jkt)
    spoofed = [
        ("Host", "evil.example"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
    ]
    evil = dpop_headers(key, token, url="https://evil.example/hello")
    assert rs.request("GET", "/hello", [*evil, *spoofed]).status_code == 401
    good = dpop_headers(key, token)
    assert rs.request("GET", "/hello", [*good, *spoofed]).status_code == 200


@pytest.mark.parametrize(
    "htu",
    [
        "https://API.EXAMPLE/hello",
        "https://api.example:443/hello",
        "https://api.example/./hello",
        "https://api.example/%68ello",
        "https://api.example/hello?other=1#frag",
    ],
)
def test_v13_htu_normalised_before_comparison(
    build: Build, issuer: Issuer, key: DPoPKey, htu: str
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello?x=1", dpop_headers(key, token, url=htu))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "htu",
    [
        "https://api.example/hello/",
        "https://api.example/Hello",
        "http://api.example/hello",
        "https://api.example:8443/hello",
        "https://api.example.evil/hello",
    ],
)
def test_v9_htu_other_resource_rejected(
    build: Build, issuer: Issuer, key: DPoPKey, htu: str
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(key, token, url=htu))
    assert response.status_code == 401
    assert rs.guard.metrics.snapshot()["rejected"] == {"htu_mismatch": 1}


def test_public_origin_with_path_prefix(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """A proxy mounts the app under /api: public_origin carries the prefix."""
    rs = build(public_origin=f"{ORIGIN}/api")
    token = issuer.token(jkt=key.jkt)
    ok = rs.request("GET", "/hello", dpop_headers(key, token, url=f"{ORIGIN}/api/hello"))
    assert ok.status_code == 200
    bad = rs.request("GET", "/hello", dpop_headers(key, token))
    assert bad.status_code == 401


def test_trusted_proxy_headers_rightmost_values(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """ProxyTrust: the value written by the trusted proxy (rightmost) wins; no header -> 400."""
    rs = build(public_origin=None, trusted_proxies=ProxyTrust(proto=1, host=1, prefix=1))
    token = issuer.token(jkt=key.jkt)
    forwarded = [
        ("X-Forwarded-Proto", "http, https"),
        ("X-Forwarded-Host", "evil.example, api.example"),
        ("X-Forwarded-Prefix", "/evil, /v1"),
    ]
    ok = dpop_headers(key, token, url="https://api.example/v1/hello")
    assert rs.request("GET", "/hello", [*ok, *forwarded]).status_code == 200
    evil = dpop_headers(key, token, url="https://evil.example/evil/hello")
    assert rs.request("GET", "/hello", [*evil, *forwarded]).status_code == 401
    missing = rs.request("GET", "/hello", dpop_headers(key, token))
    assert missing.status_code == 400
    assert rs.calls.count == 1


def test_forwarded_header_rfc7239(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build(public_origin=None, trusted_proxies=ProxyTrust(forwarded=1))
    token = issuer.token(jkt=key.jkt)
    fwd = [
        (
            "Forwarded",
            'for=1.2.3.4;proto=http;host=evil, for=10.0.0.1;proto=https;host="api.example"',
        )
    ]
    ok = dpop_headers(key, token)
    assert rs.request("GET", "/hello", [*ok, *fwd]).status_code == 200


def test_host_header_only_with_loud_opt_in(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    with pytest.warns(SecurityWarning):
        rs = build(public_origin=None, trust_host_header=True)
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(key, token))
    assert response.status_code == 200


def test_no_origin_configuration_refused(clock: Clock, issuer: Issuer) -> None:
    guard = ResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=MemoryReplayCache(),
    )
    with pytest.raises(ServerConfigurationError):
        DPoPWSGIMiddleware(wsgi_app(Calls()), guard=guard)


def test_asgi_root_path_is_part_of_htu(issuer: Issuer, key: DPoPKey) -> None:
    """ASGI root_path (a mount) is included in the expected htu."""
    calls = Calls()
    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
    )
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
    token = issuer.token(jkt=key.jkt)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, root_path="/mnt")
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            good = dpop_headers(key, token, url=f"{ORIGIN}/mnt/hello")
            bad = dpop_headers(key, token, url=f"{ORIGIN}/hello")
            return [
                (await client.get("/hello", headers=good)).status_code,
                (await client.get("/hello", headers=bad)).status_code,
            ]

    assert anyio.run(main) == [200, 401]


def test_wsgi_script_name_is_part_of_htu(issuer: Issuer, key: DPoPKey) -> None:
    calls = Calls()
    guard = ResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=MemoryReplayCache(),
        clock=Clock(),
    )
    app = DPoPWSGIMiddleware(wsgi_app(calls), guard=guard, public_origin=ORIGIN)
    token = issuer.token(jkt=key.jkt)
    transport = httpx.WSGITransport(app=app, script_name="/mnt")
    with httpx.Client(transport=transport, base_url=ORIGIN) as client:
        good = dpop_headers(key, token, url=f"{ORIGIN}/mnt/hello")
        assert client.get("/mnt/hello", headers=good).status_code == 200


# --- A: header handling ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_v1_two_dpop_headers_rejected_asgi(backend: str, issuer: Issuer, key: DPoPKey) -> None:
    calls = Calls()
    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
    )
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
    token = issuer.token(jkt=key.jkt)
    auth, proof = dpop_headers(key, token)
    _, proof2 = dpop_headers(key, token)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            return await client.get("/hello", headers=[auth, proof, proof2])

    response = anyio.run(main, backend=backend)
    assert response.status_code == 401
    assert guard.metrics.snapshot()["rejected"] == {"multiple_proofs": 1}
    assert calls.count == 0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def wsgiref_server(issuer: Issuer) -> Iterator[tuple[str, ResourceGuard, Calls]]:
    """A real WSGI server (wsgiref folds repeated fields with ',') on 127.0.0.1."""
    calls = Calls()
    guard = ResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=MemoryReplayCache(),
        clock=Clock(),
    )
    app = DPoPWSGIMiddleware(wsgi_app(calls), guard=guard, public_origin=ORIGIN)
    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", guard, calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sec02_comma_folded_dpop_headers_rejected_wsgi(
    wsgiref_server: tuple[str, ResourceGuard, Calls], issuer: Issuer, key: DPoPKey
) -> None:
    """SEC-01/02: two DPoP fields folded by the WSGI server count as two."""
    url, guard, calls = wsgiref_server
    token = issuer.token(jkt=key.jkt)
    auth, proof = dpop_headers(key, token)
    _, proof2 = dpop_headers(key, token)
    with httpx.Client(base_url=url) as client:
        response = client.get("/hello", headers=[auth, proof, proof2])
        assert response.status_code == 401
        assert guard.metrics.snapshot()["rejected"] == {"multiple_proofs": 1}
        two_auth = client.get("/hello", headers=[auth, auth, proof])
        assert two_auth.status_code == 400
        assert client.get("/hello", headers=[auth, proof]).status_code == 200
    assert calls.count == 1


# --- adapter behaviour ---------------------------------------------------------------------


def test_exclude_paths_skip_authentication(build: Build) -> None:
    rs = build(exclude_paths=["/health", "/public/*"])
    assert rs.request("GET", "/health").json() == {"public": True}
    assert rs.request("GET", "/public/a/b").json() == {"public": True}
    assert rs.request("GET", "/healthz").status_code == 401


def test_rfc9728_metadata_served(build: Build) -> None:
    meta = ProtectedResourceMetadata(
        resource=ORIGIN, authorization_servers=[ISSUER], scopes_supported=["read"]
    )
    rs = build(metadata=meta, policy=ProofPolicy(algorithms=frozenset({"ES256", "EdDSA"})))
    response = rs.request("GET", "/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.json() == {
        "resource": ORIGIN,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["read"],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "dpop_bound_access_tokens_required": True,
    }
    assert rs.calls.count == 0


def test_asgi_non_http_scopes_pass_through(issuer: Issuer) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(str(scope["type"]))

    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
    )
    app = DPoPMiddleware(inner, guard=guard, public_origin=ORIGIN)

    async def receive() -> dict[str, object]:
        return {"type": "lifespan.startup"}

    async def send(message: object) -> None:
        return None

    async def main() -> None:
        await app({"type": "lifespan"}, receive, send)
        await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    anyio.run(main)
    assert seen == ["lifespan", "websocket"]


def test_sec75_memory_cache_refused_under_several_workers(
    monkeypatch: pytest.MonkeyPatch, issuer: Issuer
) -> None:
    """SEC-74/75: the memory cache cannot see other workers; refused unless single_process."""
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with pytest.raises(ServerConfigurationError):
        ResourceGuard(tokens=tokens, replay=MemoryReplayCache())
    with pytest.raises(ServerConfigurationError):
        AsyncResourceGuard(tokens=tokens, replay=AsyncMemoryReplayCache())
    ResourceGuard(tokens=tokens, replay=MemoryReplayCache(single_process=True))
    AsyncResourceGuard(tokens=tokens, replay=AsyncMemoryReplayCache(single_process=True))


def test_rejections_logged_once_without_secrets(
    build: Build, issuer: Issuer, key: DPoPKey, caplog: pytest.LogCaptureFixture
) -> None:
    """Each rejection: one line with reason, jkt, jti hash; htu mismatch shows both URLs."""
    rs = build()
    token = issuer.token(jkt=key.jkt)
    headers = dpop_headers(key, token, url=f"{ORIGIN}/wrong")
    with caplog.at_level(logging.INFO, logger="dpopkit.resource"):
        rs.request("GET", "/hello", headers)
    records = [r for r in caplog.records if r.name == "dpopkit.resource"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert "reason=htu_mismatch" in line
    assert f"jkt={key.jkt}" in line
    assert f"{ORIGIN}/wrong" in line
    assert f"{ORIGIN}/hello" in line
    assert token not in line
    assert headers[1][1] not in line


def test_metrics_counters_and_prometheus_text(
    build: Build, issuer: Issuer, key: DPoPKey, clock: Clock
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    rs.request("GET", "/hello", dpop_headers(key, token, now=NOW - 2))
    rs.request("GET", "/hello", dpop_headers(DPoPKey.generate("ES256"), token))
    snap = rs.guard.metrics.snapshot()
    assert snap["accepted"] == {"DPoP": 1}
    assert snap["rejected"] == {"jkt_mismatch": 1}
    assert snap["iat_offset_count"] == 1
    assert snap["iat_offset_sum"] == 2.0
    text = rs.guard.metrics.prometheus_text()
    assert 'dpopkit_rs_rejected_total{reason="jkt_mismatch"} 1' in text
    assert 'dpopkit_rs_proof_iat_offset_seconds_bucket{le="5.0"} 1' in text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_offloaded_verification_same_decisions(backend: str, issuer: Issuer, key: DPoPKey) -> None:
    """offload_verification=True verifies in a worker thread with the same outcomes."""
    calls = Calls()
    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
        offload_verification=True,
    )
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
    token = issuer.token(jkt=key.jkt)
    good = dpop_headers(key, token)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            return [
                (await client.get("/hello", headers=good)).status_code,
                (await client.get("/hello", headers=good)).status_code,
                (
                    await client.get("/hello", headers=dpop_headers(key, token, method="PUT"))
                ).status_code,
            ]

    assert anyio.run(main, backend=backend) == [200, 401, 401]
    assert guard.metrics.snapshot()["rejected"] == {"replayed_jti": 1, "htm_mismatch": 1}


def test_metrics_through_prometheus_client(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    rs = build()
    registry = CollectorRegistry()
    rs.guard.metrics.register_prometheus(registry)
    token = issuer.token(jkt=key.jkt)
    rs.request("GET", "/hello", dpop_headers(key, token))
    rs.request("GET", "/hello", dpop_headers(key, token, method="POST"))
    text = generate_latest(registry).decode()
    assert 'dpopkit_rs_accepted_total{scheme="DPoP"} 1.0' in text
    assert 'dpopkit_rs_rejected_total{reason="htm_mismatch"} 1.0' in text
    assert 'dpopkit_rs_proof_iat_offset_seconds_bucket{le="+Inf"} 1.0' in text
