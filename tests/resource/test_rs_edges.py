"""Configuration errors and less travelled paths of the validators and the demo app."""

from __future__ import annotations

import functools
import time
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, InvalidTokenError, TemporarilyUnavailableError
from dpopkit.demo.api import create_whoami_app
from dpopkit.resource.tokens import AsyncJWTAccessTokens, IntrospectionTokens, JWTAccessTokens
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    Issuer,
    KeyServer,
    dpop_headers,
    free_port,
    http_server,
)

JWKS: dict[str, Any] = {"keys": []}


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": "", "audience": AUDIENCE, "jwks": JWKS},
        {"issuer": ISSUER, "audience": [], "jwks": JWKS},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "algorithms": ["HS256"]},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "algorithms": []},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "leeway": -1},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "jwks_uri": "https://x/jwks"},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "timeout": 0},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": JWKS, "cache_size": -1},
        {"issuer": "http://as.example", "audience": AUDIENCE},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks_uri": "http://as.example/jwks"},
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks": {"keys": "nope"}},
    ],
)
def test_jwt_validator_misconfiguration_raises_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JWTAccessTokens(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"endpoint": "http://as.example/introspect", "client_id": "a", "client_secret": "b"},
        {"endpoint": "https://as.example/introspect", "client_id": "", "client_secret": "b"},
        {"endpoint": "https://as.example/i", "client_id": "a", "client_secret": "b", "timeout": 0},
    ],
)
def test_introspection_misconfiguration_raises(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IntrospectionTokens(**options, audience=AUDIENCE)


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "x" * 20000, "e30.e30.", "!!.e30.sig"],
)
def test_malformed_tokens_are_invalid_token(issuer: Issuer, token: str) -> None:
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    with pytest.raises(InvalidTokenError):
        tokens.validate(token, now=NOW)


def test_non_string_kid_is_invalid(issuer: Issuer) -> None:
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    with pytest.raises(InvalidTokenError):
        tokens.validate(issuer.token(header={"kid": 7}), now=NOW)


def test_oidc_discovery_fallback_and_bad_jwks_document() -> None:
    """RFC 8414 well-known missing: OpenID Connect discovery is used; a broken JWKS is a 503."""
    server = KeyServer()
    with http_server(server.routes) as base:
        server.base = base
        document = {"issuer": base, "jwks_uri": f"{base}/jwks"}
        server.routes.get["/.well-known/openid-configuration"] = lambda: (200, document)
        tokens = JWTAccessTokens(issuer=base, audience=AUDIENCE, allow_insecure_http=True)
        assert tokens.validate(server.issuer().token(), now=NOW).sub == "alice"
        assert server.routes.hits["/.well-known/oauth-authorization-server"] == 1  # 404 first
        broken = JWTAccessTokens(
            issuer=base, audience=AUDIENCE, jwks_uri=f"{base}/broken", allow_insecure_http=True
        )
        server.routes.get["/broken"] = lambda: (200, {"keys": "not a list"})
        with pytest.raises(TemporarilyUnavailableError):
            broken.validate(server.issuer().token(), now=NOW)


def test_async_jwks_unreachable_is_503_and_rate_limited() -> None:
    port = free_port()
    tokens = AsyncJWTAccessTokens(
        issuer=f"http://127.0.0.1:{port}",
        audience=AUDIENCE,
        allow_insecure_http=True,
        timeout=1.0,
    )
    token = Issuer(issuer=f"http://127.0.0.1:{port}").token()
    for when in (NOW, NOW + 0.5):
        with pytest.raises(TemporarilyUnavailableError):
            anyio.run(functools.partial(tokens.validate, token, now=when))
    assert tokens.fetch_count == 0
    server = KeyServer()
    with http_server(server.routes, port=port) as base:
        server.publish_metadata(base)
        assert anyio.run(functools.partial(tokens.validate, token, now=NOW + 2)).sub == "alice"
    assert tokens.fetch_count == 1


def test_demo_app_metrics_404_405_and_lifespan(issuer: Issuer) -> None:
    from dpopkit.resource.tokens import JWTAccessTokens as Tokens

    origin = "https://api.example"
    app = create_whoami_app(
        issuer=ISSUER,
        public_origin=origin,
        tokens=Tokens(issuer=ISSUER, audience=origin, jwks=issuer.jwks()),
        metrics=True,
    )
    key = DPoPKey.generate("ES256")
    now = time.time()
    token = issuer.token(jkt=key.jkt, now=now, aud=origin)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    async def main() -> list[httpx.Response]:
        await app({"type": "lifespan"}, receive, send)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=origin) as client:
            return [
                await client.get("/metrics"),
                await client.get(
                    "/nope", headers=dpop_headers(key, token, url=f"{origin}/nope", now=now)
                ),
                await client.put(
                    "/api/whoami",
                    headers=dpop_headers(
                        key, token, method="PUT", url=f"{origin}/api/whoami", now=now
                    ),
                ),
            ]

    metrics, missing, method = anyio.run(main)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert missing.status_code == 404
    assert method.status_code == 405
