"""The thin FastAPI, Flask and Django adapters, each against real apps."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy, parse_challenges
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from tests.resource._rs_support import AUDIENCE, ISSUER, NOW, ORIGIN, Clock, Issuer, dpop_headers

SECRET = b"n" * 32


def _tokens(issuer: Issuer) -> JWTAccessTokens:
    return JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())


# --- FastAPI ------------------------------------------------------------------------------


def _fastapi_app(issuer: Issuer, **guard_options: Any) -> Any:
    from fastapi import FastAPI, Security

    from dpopkit.resource.fastapi import DPoPSecurity

    guard = AsyncResourceGuard(
        tokens=_tokens(issuer), replay=AsyncMemoryReplayCache(), clock=Clock(), **guard_options
    )
    auth = DPoPSecurity(guard, public_origin=ORIGIN)
    app = FastAPI()

    @app.get("/hello")
    async def hello(
        principal: DPoPPrincipal = Security(auth, scopes=["read"]),  # noqa: B008
    ) -> dict[str, Any]:
        return {"sub": principal.sub, "jkt": principal.jkt}

    @app.get("/admin")
    async def admin(
        principal: DPoPPrincipal = Security(auth, scopes=["admin"]),  # noqa: B008
    ) -> dict[str, Any]:
        return {"sub": principal.sub}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        return {"public": True}

    return app


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fastapi_dependency_returns_principal_and_enforces_scopes(
    backend: str, issuer: Issuer, key: DPoPKey
) -> None:
    app = _fastapi_app(issuer)
    token = issuer.token(jkt=key.jkt, scope="read")

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            return [
                await client.get("/hello", headers=dpop_headers(key, token)),
                await client.get("/hello"),
                await client.get("/admin", headers=dpop_headers(key, token, url=f"{ORIGIN}/admin")),
                await client.get("/hello", headers=dpop_headers(DPoPKey.generate("ES256"), token)),
                await client.get("/public"),
            ]

    ok, missing, scope, wrong_key, public = anyio.run(main, backend=backend)
    assert ok.status_code == 200
    assert ok.json() == {"sub": "alice", "jkt": key.jkt}
    assert missing.status_code == 401
    (challenge,) = parse_challenges(missing.headers["www-authenticate"])
    assert challenge.is_scheme("DPoP")
    assert "error" not in challenge.params
    assert scope.status_code == 403
    assert parse_challenges(scope.headers["www-authenticate"])[0].params["error"] == (
        "insufficient_scope"
    )
    assert wrong_key.status_code == 401
    assert parse_challenges(wrong_key.headers["www-authenticate"])[0].params["error"] == (
        "invalid_token"
    )
    assert public.status_code == 200


def test_fastapi_openapi_shows_dpop_security_scheme(issuer: Issuer) -> None:
    schema = _fastapi_app(issuer).openapi()
    assert schema["components"]["securitySchemes"]["DPoP"]["type"] == "http"
    assert schema["components"]["securitySchemes"]["DPoP"]["scheme"] == "DPoP"
    assert schema["paths"]["/hello"]["get"]["security"] == [{"DPoP": ["read"]}]
    assert "security" not in schema["paths"]["/public"]["get"]


def test_fastapi_nonce_challenge_and_fresh_nonce_header(issuer: Issuer, key: DPoPKey) -> None:
    nonces = NonceIssuer([SECRET])
    app = _fastapi_app(issuer, nonces=nonces, policy=ProofPolicy(require_nonce=True))
    token = issuer.token(jkt=key.jkt, scope="read")

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            first = await client.get("/hello", headers=dpop_headers(key, token))
            nonce = first.headers["dpop-nonce"]
            old = nonces.issue(now=NOW - 60)
            second = await client.get("/hello", headers=dpop_headers(key, token, nonce=old))
            third = await client.get("/hello", headers=dpop_headers(key, token, nonce=nonce))
            return [first, second, third]

    first, second, third = anyio.run(main)
    assert first.status_code == 401
    assert second.status_code == 200
    assert second.headers["dpop-nonce"] == nonces.issue(now=NOW)  # old nonce: fresh one sent
    assert third.status_code == 200
    assert "dpop-nonce" not in third.headers


# --- Flask --------------------------------------------------------------------------------


def _flask_app(issuer: Issuer, **guard_options: Any) -> Any:
    from flask import Flask

    from dpopkit.resource.flask import DPoP, current_principal

    app = Flask("rs-test")
    guard = ResourceGuard(
        tokens=_tokens(issuer), replay=MemoryReplayCache(), clock=Clock(), **guard_options
    )
    dpop = DPoP(app, guard=guard, public_origin=ORIGIN)

    @app.get("/hello")
    @dpop.required("read")
    def hello() -> dict[str, Any]:
        principal = current_principal()
        return {"sub": principal.sub, "jkt": principal.jkt}

    @app.get("/admin")
    @dpop.required("admin")
    def admin() -> dict[str, Any]:
        return {"sub": current_principal().sub}

    return app


def test_flask_extension_and_decorator(issuer: Issuer, key: DPoPKey) -> None:
    app = _flask_app(issuer)
    token = issuer.token(jkt=key.jkt, scope="read")
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN) as client:
        ok = client.get("/hello", headers=dpop_headers(key, token))
        assert ok.status_code == 200
        assert ok.json() == {"sub": "alice", "jkt": key.jkt}
        replay = client.get("/hello", headers=dpop_headers(key, token))
        assert replay.status_code == 200  # a new proof each time (new jti)
        missing = client.get("/hello")
        assert missing.status_code == 401
        assert "error" not in parse_challenges(missing.headers["www-authenticate"])[0].params
        scope = client.get("/admin", headers=dpop_headers(key, token, url=f"{ORIGIN}/admin"))
        assert scope.status_code == 403


def test_flask_nonce_header_on_success(issuer: Issuer, key: DPoPKey) -> None:
    nonces = NonceIssuer([SECRET])
    app = _flask_app(issuer, nonces=nonces, policy=ProofPolicy(require_nonce=True))
    token = issuer.token(jkt=key.jkt, scope="read")
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN) as client:
        first = client.get("/hello", headers=dpop_headers(key, token))
        assert first.status_code == 401
        assert first.headers["dpop-nonce"] == nonces.issue(now=NOW)
        old = nonces.issue(now=NOW - 60)
        second = client.get("/hello", headers=dpop_headers(key, token, nonce=old))
        assert second.status_code == 200
        assert second.headers["dpop-nonce"] == nonces.issue(now=NOW)


# --- Django -------------------------------------------------------------------------------


def _django_app(issuer: Issuer, *, protect_all: bool = False) -> Any:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="dpopkit-tests-only",
            ALLOWED_HOSTS=["api.example"],
            ROOT_URLCONF="tests.resource._rs_django_urls",
            MIDDLEWARE=["dpopkit.resource.django.DPoPMiddleware"],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    guard = ResourceGuard(tokens=_tokens(issuer), replay=MemoryReplayCache(), clock=Clock())
    settings.DPOPKIT = {"guard": guard, "public_origin": ORIGIN, "protect_all": protect_all}
    from django.core.handlers.wsgi import WSGIHandler  # type: ignore[import-untyped]

    return WSGIHandler()


def test_django_middleware_and_decorator(issuer: Issuer, key: DPoPKey) -> None:
    app = _django_app(issuer)
    token = issuer.token(jkt=key.jkt, scope="read")
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN) as client:
        ok = client.get("/hello", headers=dpop_headers(key, token))
        assert ok.status_code == 200
        assert ok.json() == {"sub": "alice", "scopes": ["read"], "jkt": key.jkt}
        missing = client.get("/hello")
        assert missing.status_code == 401
        assert parse_challenges(missing.headers["www-authenticate"])[0].is_scheme("DPoP")
        scope = client.get("/admin", headers=dpop_headers(key, token, url=f"{ORIGIN}/admin"))
        assert scope.status_code == 403
        bound_as_bearer = client.get("/hello", headers=dpop_headers(key, token, scheme="Bearer"))
        assert bound_as_bearer.status_code == 401
        assert client.get("/plain").status_code == 200  # not marked: not protected


def test_django_protect_all_with_exempt(issuer: Issuer, key: DPoPKey) -> None:
    app = _django_app(issuer, protect_all=True)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN) as client:
        assert client.get("/plain").status_code == 401
        assert client.get("/health").status_code == 200


def test_rs15_cors_exposes_challenge_and_nonce(issuer: Issuer, key: DPoPKey) -> None:
    """RS-15: with a CORS middleware outside the DPoP middleware, browsers can read
    WWW-Authenticate and DPoP-Nonce (documented configuration)."""
    from starlette.middleware.cors import CORSMiddleware

    from dpopkit.resource.asgi import DPoPMiddleware
    from tests.resource._rs_support import Calls, asgi_app

    guard = AsyncResourceGuard(
        tokens=_tokens(issuer),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
        nonces=NonceIssuer([SECRET]),
        policy=ProofPolicy(require_nonce=True),
    )
    app = CORSMiddleware(
        DPoPMiddleware(asgi_app(Calls()), guard=guard, public_origin=ORIGIN),
        allow_origins=["https://app.example"],
        expose_headers=["WWW-Authenticate", "DPoP-Nonce"],
    )

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            headers = [
                *dpop_headers(key, issuer.token(jkt=key.jkt)),
                ("Origin", "https://app.example"),
            ]
            return await client.get("/hello", headers=headers)

    response = anyio.run(main)
    assert response.status_code == 401
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"www-authenticate", "dpop-nonce"} <= exposed
    assert "dpop-nonce" in response.headers
