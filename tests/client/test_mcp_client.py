"""DPoP for the MCP SDK's client auth: a small AS + resource on httpx2's ASGI transport.

The app is a real ASGI application that checks every proof with dpopkit's own
:func:`~dpopkit.verify_proof`; the flow under test is the SDK's
``OAuthClientProvider`` driven through :class:`DPoPOAuthClientProvider`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

pytest.importorskip("mcp")

import httpx2
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dpopkit import ClientError, DPoPKey, Reason, TokenResponseError, verify_proof
from dpopkit.client.httpx2 import dpop_error
from dpopkit.integrations.mcp.client import (
    DPoPOAuthClientProvider,
    FileTokenStorage,
)

BASE = "http://mcp.test"
REDIRECT = "http://127.0.0.1:9/callback"


@dataclass
class Lab:
    """What the app saw and how it answers."""

    token_type: str = "DPoP"
    offers_dpop: bool = True
    rs_nonce: str | None = None
    expires_in: int = 3600
    authorize: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    mcp_requests: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> jkt


def build_app(lab: Lab) -> Starlette:
    async def prm(request: Request) -> Response:
        return JSONResponse({"resource": f"{BASE}/mcp", "authorization_servers": [BASE]})

    async def as_metadata(request: Request) -> Response:
        doc: dict[str, Any] = {
            "issuer": BASE,
            "authorization_endpoint": f"{BASE}/authorize",
            "token_endpoint": f"{BASE}/token",
            "registration_endpoint": f"{BASE}/register",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }
        if lab.offers_dpop:
            doc["dpop_signing_alg_values_supported"] = ["ES256"]
        return JSONResponse(doc)

    async def register(request: Request) -> Response:
        body = await request.json()
        return JSONResponse(
            {**body, "client_id": "c1", "token_endpoint_auth_method": "none"}, status_code=201
        )

    async def authorize(request: Request) -> Response:
        params = dict(request.query_params)
        lab.authorize.append(params)
        query = urlencode({"code": "code-1", "state": params["state"], "iss": BASE})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(request: Request) -> Response:
        form = dict((await request.form()).items())
        proof = request.headers.get("dpop")
        seen: dict[str, Any] = {"form": form, "proof": proof}
        lab.token_requests.append(seen)
        if proof is None:
            return JSONResponse({"error": "invalid_dpop_proof"}, status_code=400)
        verified = verify_proof(proof, htm="POST", htu=f"{BASE}/token", now=time.time())
        access = secrets.token_urlsafe(16)
        lab.tokens[access] = verified.jkt
        seen["jkt"] = verified.jkt
        answer = {
            "access_token": access,
            "token_type": lab.token_type,
            "expires_in": lab.expires_in,
        }
        return JSONResponse({**answer, "refresh_token": "rt-1"})

    async def mcp(request: Request) -> Response:
        scheme, _, access = request.headers.get("authorization", "").partition(" ")
        proof = request.headers.get("dpop")
        lab.mcp_requests.append({"scheme": scheme, "proof": proof})
        challenge = {
            "WWW-Authenticate": f'DPoP resource_metadata="{BASE}/.well-known/'
            'oauth-protected-resource/mcp"'
        }
        if access not in lab.tokens or proof is None or scheme.lower() != "dpop":
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
        verified = verify_proof(
            proof,
            htm="POST",
            htu=f"{BASE}/mcp",
            access_token=access,
            expected_jkt=lab.tokens[access],
            now=time.time(),
        )
        if lab.rs_nonce is not None and verified.claims.get("nonce") != lab.rs_nonce:
            return JSONResponse(
                {"error": "use_dpop_nonce"},
                status_code=401,
                headers={
                    "WWW-Authenticate": 'DPoP error="use_dpop_nonce"',
                    "DPoP-Nonce": lab.rs_nonce,
                },
            )
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {}})

    return Starlette(
        routes=[
            Route("/.well-known/oauth-protected-resource/mcp", prm),
            Route("/.well-known/oauth-authorization-server", as_metadata),
            Route("/register", register, methods=["POST"]),
            Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]),
            Route("/mcp", mcp, methods=["POST"]),
        ]
    )


def provider(
    lab: Lab, storage: FileTokenStorage, transport: httpx2.ASGITransport, **kwargs: Any
) -> DPoPOAuthClientProvider:
    callback: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        async with httpx2.AsyncClient(transport=transport) as http:
            answer = await http.get(url)
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        callback.update({name: values[0] for name, values in query.items()})

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=callback["code"], state=callback["state"], iss=callback.get("iss")
        )

    return DPoPOAuthClientProvider(
        server_url=f"{BASE}/mcp",
        client_metadata=OAuthClientMetadata(
            redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        key=storage.key,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        allow_insecure_http=True,
        **kwargs,
    )


async def call_mcp(auth: DPoPOAuthClientProvider, transport: httpx2.ASGITransport) -> int:
    async with httpx2.AsyncClient(transport=transport, auth=auth) as http:
        answer = await http.post(f"{BASE}/mcp", content=b'{"jsonrpc":"2.0","id":1}')
    return answer.status_code


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_flow_binds_code_token_and_requests_to_the_key(tmp_path: Path) -> None:
    """C-1, C-5, C-18: dpop_jkt on authorize, a proof at the token endpoint, DPoP on MCP."""
    lab = Lab()
    transport = httpx2.ASGITransport(app=build_app(lab))
    storage = FileTokenStorage(tmp_path)
    assert await call_mcp(provider(lab, storage, transport), transport) == 200
    assert lab.authorize[0]["dpop_jkt"] == storage.key.jkt
    assert lab.token_requests[0]["jkt"] == storage.key.jkt
    assert lab.mcp_requests[0]["proof"] is None  # the probe that earns the 401
    assert lab.mcp_requests[-1]["scheme"] == "DPoP"
    stored = await storage.get_tokens()
    assert stored is not None
    assert str(stored.token_type) == "DPoP"


@pytest.mark.anyio
async def test_restart_keeps_the_key_and_the_bound_token(tmp_path: Path) -> None:
    """C-8: the key file beside the tokens: a new process presents the stored token, no re-auth."""
    lab = Lab()
    transport = httpx2.ASGITransport(app=build_app(lab))
    assert await call_mcp(provider(lab, FileTokenStorage(tmp_path), transport), transport) == 200
    again = FileTokenStorage(tmp_path)
    assert await call_mcp(provider(lab, again, transport), transport) == 200
    assert len(lab.token_requests) == 1
    assert (tmp_path / "key.jwk").stat().st_mode & 0o077 == 0


@pytest.mark.anyio
@pytest.mark.parametrize("fallback", [False, True])
async def test_bearer_answer_from_a_dpop_as_is_refused(tmp_path: Path, fallback: bool) -> None:
    """C-7: token_type Bearer from an AS that offers DPoP is a downgrade, fallback or not."""
    lab = Lab(token_type="Bearer")
    transport = httpx2.ASGITransport(app=build_app(lab))
    auth = provider(lab, FileTokenStorage(tmp_path), transport, bearer_fallback=fallback)
    with pytest.raises(TokenResponseError) as caught:
        await call_mcp(auth, transport)
    assert caught.value.reason is Reason.TOKEN_RESPONSE


@pytest.mark.anyio
async def test_bearer_from_an_as_without_dpop_needs_the_fallback(tmp_path: Path) -> None:
    """C-7: without bearer_fallback even an AS that never offered DPoP gets refused."""
    lab = Lab(token_type="Bearer", offers_dpop=False)
    transport = httpx2.ASGITransport(app=build_app(lab))
    with pytest.raises(TokenResponseError):
        await call_mcp(provider(lab, FileTokenStorage(tmp_path), transport), transport)


@pytest.mark.anyio
async def test_rs_nonce_is_retried_once(tmp_path: Path) -> None:
    """C-10: a 401 use_dpop_nonce from the MCP server is answered once, with that nonce."""
    lab = Lab(rs_nonce="n-1")
    transport = httpx2.ASGITransport(app=build_app(lab))
    assert await call_mcp(provider(lab, FileTokenStorage(tmp_path), transport), transport) == 200
    schemes = [seen["scheme"] for seen in lab.mcp_requests]
    assert schemes == ["", "DPoP", "DPoP"]  # probe, challenge answered, retry with the nonce


@pytest.mark.anyio
async def test_streamed_body_is_not_resent_after_an_rs_nonce(tmp_path: Path) -> None:
    """C-10: a fresh RS nonce for a streamed MCP body: the 401 comes back, nothing is resent."""
    lab = Lab(rs_nonce="n-1")
    transport = httpx2.ASGITransport(app=build_app(lab))
    auth = provider(lab, FileTokenStorage(tmp_path), transport)
    assert await call_mcp(auth, transport) == 200
    lab.rs_nonce = "n-2"  # the server rotates its nonce
    seen = len(lab.mcp_requests)

    async def body() -> Any:
        yield b'{"jsonrpc":"2.0","id":2}'

    async with httpx2.AsyncClient(transport=transport, auth=auth) as http:
        answer = await http.post(f"{BASE}/mcp", content=body())
    assert answer.status_code == 401
    error = dpop_error(answer)
    assert error is not None
    assert error.reason is Reason.BODY_NOT_REPLAYABLE
    assert len(lab.mcp_requests) == seen + 1  # sent once, never again
    assert len(lab.token_requests) == 1  # and no new authorization


@pytest.mark.anyio
async def test_refresh_is_proven_with_the_same_key(tmp_path: Path) -> None:
    """C-8: the SDK's refresh goes out with a proof by the key the token is bound to."""
    lab = Lab(expires_in=0)  # expired at once: the next request refreshes first
    transport = httpx2.ASGITransport(app=build_app(lab))
    storage = FileTokenStorage(tmp_path)
    auth = provider(lab, storage, transport)
    assert await call_mcp(auth, transport) == 200
    lab.expires_in = 3600
    assert await call_mcp(auth, transport) == 200
    grants = [seen["form"]["grant_type"] for seen in lab.token_requests]
    assert grants == ["authorization_code", "refresh_token"]
    assert lab.token_requests[1]["jkt"] == storage.key.jkt
    stored = await storage.get_tokens()
    assert stored is not None
    assert str(stored.token_type) == "DPoP"


@pytest.mark.anyio
async def test_key_alg_the_as_does_not_list_is_refused(tmp_path: Path) -> None:
    """C-16: the AS lists ES256 only: an RS256 key is a configuration error before any token."""
    lab = Lab()
    transport = httpx2.ASGITransport(app=build_app(lab))
    storage = FileTokenStorage(tmp_path, alg="RS256")
    assert storage.key.alg == "RS256"
    with pytest.raises(ClientError) as caught:
        await call_mcp(provider(lab, storage, transport), transport)
    assert caught.value.reason is Reason.CONFIGURATION
    assert lab.token_requests == []
    assert isinstance(storage.key, DPoPKey)
