"""The FastAPI dependency refuses with the ASGI middleware's exact response (RFC 6750 §3)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.storage.memory import AsyncMemoryReplayCache
from tests.resource._rs_support import AUDIENCE, ISSUER, ORIGIN, Clock, Issuer, dpop_headers

pytest.importorskip("fastapi")

#: Headers a refusal carries whichever adapter sends it (RFC 9449 §7.1, §8; RFC 6750 §3).
SHAPE_HEADERS = ("www-authenticate", "dpop-nonce", "cache-control", "content-type")


def _guard(issuer: Issuer, *, nonce: bool) -> AsyncResourceGuard:
    return AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        replay=AsyncMemoryReplayCache(),
        clock=Clock(),
        nonces=NonceIssuer([b"n" * 32]) if nonce else None,
        policy=ProofPolicy(require_nonce=nonce),
    )


def _fastapi(guard: AsyncResourceGuard) -> Any:
    from fastapi import FastAPI, Security

    from dpopkit.resource.fastapi import DPoPSecurity

    auth = DPoPSecurity(guard, public_origin=ORIGIN)
    app = FastAPI()

    @app.get("/hello")
    async def hello(
        principal: DPoPPrincipal = Security(auth, scopes=["read"]),  # noqa: B008
    ) -> dict[str, Any]:
        return {"sub": principal.sub}

    return app


def _middleware(guard: AsyncResourceGuard) -> Any:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return DPoPMiddleware(ok, guard=guard, public_origin=ORIGIN, route_scopes={"/hello": ["read"]})


def _get(app: Any, headers: list[tuple[str, str]]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            return await client.get("/hello", headers=headers)

    return anyio.run(go)


CASES = ["missing_token", "bad_proof", "insufficient_scope", "use_dpop_nonce"]


@pytest.mark.parametrize("case", CASES)
def test_fastapi_refusal_has_the_middleware_shape(case: str, issuer: Issuer, key: DPoPKey) -> None:
    """HD-30: a FastAPI refusal is the middleware's response: status, JSON body, headers.

    RFC 6750 §3 / RFC 9449 §7.1: ``{"error", "error_description"}`` with
    ``WWW-Authenticate``, ``DPoP-Nonce`` and ``Cache-Control: no-store`` — never
    FastAPI's ``{"detail": ...}`` wrapper.
    """
    token = issuer.token(jkt=key.jkt, scope="write" if case == "insufficient_scope" else "read")
    headers: list[tuple[str, str]] = {
        "missing_token": [],
        "bad_proof": [("Authorization", f"DPoP {token}"), ("DPoP", "not.a.proof")],
        "insufficient_scope": dpop_headers(key, token),
        "use_dpop_nonce": dpop_headers(key, token),
    }[case]
    nonce = case == "use_dpop_nonce"
    # Two guards with the same configuration: the replay cache must not see a proof twice.
    via_fastapi = _get(_fastapi(_guard(issuer, nonce=nonce)), headers)
    via_middleware = _get(_middleware(_guard(issuer, nonce=nonce)), headers)
    assert via_middleware.status_code in (400, 401, 403)
    assert via_fastapi.status_code == via_middleware.status_code
    assert via_fastapi.content == via_middleware.content
    if via_middleware.content:
        assert set(via_fastapi.json()) == set(via_middleware.json()) >= {"error"}
        assert "detail" not in via_fastapi.json()
    for name in SHAPE_HEADERS:
        assert via_fastapi.headers.get(name) == via_middleware.headers.get(name), name
    assert via_fastapi.headers["cache-control"] == "no-store"
    if nonce:
        assert via_fastapi.headers["dpop-nonce"]


def test_fastapi_refusal_handler_can_be_installed_up_front(issuer: Issuer) -> None:
    """HD-30: ``install_error_handler`` registers the verbatim renderer at app creation."""
    from dpopkit.resource.fastapi import DPoPRefusal, install_error_handler

    app = _fastapi(_guard(issuer, nonce=False))
    install_error_handler(app)
    assert DPoPRefusal in app.exception_handlers
    refused = _get(app, [])
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("DPoP")
