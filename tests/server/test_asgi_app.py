"""The Starlette app via httpx.ASGITransport: routing, CORS (AS-20), HTML flow, test mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dpopkit import DPoPKey, ServerConfigurationError, create_proof
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.service import ServerSettings, TokenService
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore

from .conftest import (
    ALICE_PASSWORD,
    ISSUER,
    REDIRECT,
    SECRET,
    TOKEN_URL,
    USERS,
    Clock,
    authorize_params,
    basic,
    hidden_fields,
    make_service,
    pkce,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(app: Any, *, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=ISSUER)


@pytest.fixture
def service(store: SQLGrantStore, clock: Clock) -> TokenService:
    svc = make_service(store, clock)
    store.put_client(
        ClientRecord(
            client_id="evil-name",
            token_endpoint_auth_method="none",
            grant_types=("authorization_code",),
            redirect_uris=(REDIRECT,),
            client_name='<script>alert("x")</script>',
        )
    )
    return svc


@pytest.fixture
async def http(service: TokenService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, authenticator=ConfigUsers(USERS), cors_origins=["https://spa.test"])
    async with _client(app) as client:
        yield client


def _proof(clock: Clock, key: DPoPKey, url: str = TOKEN_URL) -> str:
    return create_proof(key, htm="POST", htu=url, now=clock.now, allow_insecure_http=True)


async def test_token_endpoint_through_asgi(http: httpx.AsyncClient, clock: Clock) -> None:
    """AS-1..AS-3 over ASGI: a DPoP token request succeeds with no-store."""
    key = DPoPKey.generate("ES256")
    resp = await http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic("conf", SECRET), "DPoP": _proof(clock, key)},
    )
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    assert resp.json()["token_type"] == "DPoP"


async def test_token_endpoint_errors_are_json(http: httpx.AsyncClient) -> None:
    """X-12 / HD-7: errors are 400 JSON with no-store; GET → 405; oversized → 413."""
    resp = await http.post(
        "/token", data={"grant_type": "client_credentials"}, headers={"DPoP": "x.y"}
    )
    assert resp.status_code in (400, 401)
    assert resp.headers["cache-control"] == "no-store"
    assert "error" in resp.json()
    assert (await http.get("/token")).status_code == 405
    big = await http.post("/token", content=b"a=" + b"x" * 70000)
    assert big.status_code == 413


async def test_as20_cors_exposes_dpop_nonce(http: httpx.AsyncClient) -> None:
    """AS-20: CORS answers expose DPoP-Nonce; preflight allows the DPoP header."""
    pre = await http.options(
        "/token",
        headers={
            "Origin": "https://spa.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "dpop, content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://spa.test"
    assert "DPoP" in pre.headers["access-control-allow-headers"]
    resp = await http.post(
        "/token", data={"grant_type": "client_credentials"}, headers={"Origin": "https://spa.test"}
    )
    assert "DPoP-Nonce" in resp.headers["access-control-expose-headers"]
    other = await http.post("/token", data={}, headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in other.headers


async def test_metadata_and_jwks(http: httpx.AsyncClient) -> None:
    """AS-8, X-16: metadata at the well-known URL, issuer exact; JWKS holds public keys only."""
    meta = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == TOKEN_URL
    assert "registration_endpoint" not in meta
    jwks = (await http.get("/jwks")).json()
    assert jwks["keys"]
    assert all("d" not in k and k["use"] == "sig" for k in jwks["keys"])
    assert (await http.post("/register", json={})).status_code == 404


async def _login(http: httpx.AsyncClient, client_id: str = "public") -> tuple[httpx.Response, str]:
    _, challenge = pkce()
    page = await http.get("/authorize", params=authorize_params(client_id, challenge))
    return page, page.text


async def test_authorize_html_login_consent_redirect(http: httpx.AsyncClient) -> None:
    """RFC 6749 §4.1, RFC 9207: login + consent pages; redirect carries code, state and iss."""
    page, text = await _login(http)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in text.lower()
    fields = hidden_fields(text)
    wrong = await http.post(
        "/authorize", data={**fields, "username": "alice", "password": "nope", "action": "login"}
    )
    # The form again with an error: 200, a 401 would need a challenge (RFC 9110 §15.5.2).
    assert wrong.status_code == 200
    assert 'role="alert"' in wrong.text
    fields = hidden_fields(wrong.text)
    consent = await http.post(
        "/authorize",
        data={**fields, "username": "alice", "password": ALICE_PASSWORD, "action": "login"},
    )
    assert consent.status_code == 200
    done = await http.post("/authorize", data={**hidden_fields(consent.text), "action": "approve"})
    assert done.status_code == 303
    location = done.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["st-1"]
    assert query["iss"] == [ISSUER]
    assert query["code"]


async def test_authorize_escapes_client_name(http: httpx.AsyncClient) -> None:
    """Escaped output: a hostile client_name never reaches the page as markup."""
    page, text = await _login(http, "evil-name")
    assert page.status_code == 200
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


async def test_authorize_csrf_required(http: httpx.AsyncClient, service: TokenService) -> None:
    """CSRF: a form without the browser cookie or with a wrong token → 403."""
    _, text = await _login(http)
    fields = hidden_fields(text)
    login = {**fields, "username": "alice", "password": ALICE_PASSWORD, "action": "login"}
    bad_token = await http.post("/authorize", data={**login, "csrf": "0" * 64})
    assert bad_token.status_code == 403
    app = create_app(service, authenticator=ConfigUsers(USERS))
    async with _client(app) as stranger:  # another browser: no cookie
        assert (await stranger.post("/authorize", data=login)).status_code == 403


async def test_authorize_deny_redirects_access_denied(http: httpx.AsyncClient) -> None:
    """RFC 6749 §4.1.2.1: the user cancels → access_denied with state and iss."""
    _, text = await _login(http)
    resp = await http.post("/authorize", data={**hidden_fields(text), "action": "deny"})
    assert resp.status_code == 303
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["iss"] == [ISSUER]


@pytest.mark.parametrize(
    "params",
    [
        {"redirect_uri": "https://evil.test/cb"},
        {"redirect_uri": REDIRECT + "/extra"},
        {"client_id": "ghost"},
        {"client_id": ""},
    ],
)
async def test_authorize_no_open_redirect(http: httpx.AsyncClient, params: dict[str, str]) -> None:
    """RFC 6749 §4.1.2.1: unknown client or unregistered redirect_uri → error page, no redirect."""
    query = {**authorize_params("public", pkce()[1]), **params}
    resp = await http.get("/authorize", params=query)
    assert resp.status_code == 400
    assert "location" not in resp.headers


async def test_authorize_plain_pkce_redirects_error(http: httpx.AsyncClient) -> None:
    """X-14: PKCE plain (or none) is refused with invalid_request at the redirect_uri."""
    query = {**authorize_params("public", pkce()[1]), "code_challenge_method": "plain"}
    resp = await http.get("/authorize", params=query)
    assert resp.status_code == 303
    assert parse_qs(urlsplit(resp.headers["location"]).query)["error"] == ["invalid_request"]


async def test_par_required_client(store: SQLGrantStore, clock: Clock) -> None:
    """RFC 9126 §5: a client that requires PAR cannot use a plain authorization request."""
    svc = make_service(store, clock)
    store.put_client(
        ClientRecord(
            client_id="par-only",
            token_endpoint_auth_method="none",
            grant_types=("authorization_code",),
            redirect_uris=(REDIRECT,),
            require_pushed_authorization_requests=True,
        )
    )
    async with _client(create_app(svc, authenticator=ConfigUsers(USERS))) as http:
        resp = await http.get("/authorize", params=authorize_params("par-only", pkce()[1]))
        assert resp.status_code == 400
        assert "location" not in resp.headers


def _test_mode_service(store: SQLGrantStore, clock: Clock, issuer: str) -> TokenService:
    return TokenService(
        ServerSettings(issuer=issuer, test_mode_user="alice"),
        store=store,
        replay=MemoryReplayCache(single_process=True),
        clock=clock,
    )


async def test_test_mode_auto_login_and_loopback_only(store: SQLGrantStore, clock: Clock) -> None:
    """Test mode: code issued without a person; non-loopback clients refused."""
    svc = _test_mode_service(store, clock, "http://127.0.0.1:9")
    store.put_client(
        ClientRecord(
            client_id="public",
            token_endpoint_auth_method="none",
            grant_types=("authorization_code",),
            redirect_uris=(REDIRECT,),
        )
    )
    app = create_app(svc, authenticator=ConfigUsers({}))
    async with _client(app) as http:
        resp = await http.get("/authorize", params=authorize_params("public", pkce()[1]))
        assert resp.status_code == 303
        assert "code" in parse_qs(urlsplit(resp.headers["location"]).query)
    async with _client(app, client_ip="203.0.113.5") as remote:
        resp = await remote.get("/authorize", params=authorize_params("public", pkce()[1]))
        assert resp.status_code == 403


def test_test_mode_refuses_non_loopback_issuer(store: SQLGrantStore, clock: Clock) -> None:
    """Test mode refuses to start for a non-loopback issuer."""
    svc = _test_mode_service(store, clock, "https://as.example.com")
    with pytest.raises(ServerConfigurationError):
        create_app(svc, authenticator=ConfigUsers({}))


async def test_dynamic_registration(store: SQLGrantStore, clock: Clock) -> None:
    """RFC 7591: register a confidential client, then use it with DPoP."""
    svc = make_service(
        store,
        clock,
        registration_enabled=True,
        registration_allowed_scopes=("read",),
        registration_allowed_grant_types=("client_credentials",),
    )
    async with _client(create_app(svc, authenticator=ConfigUsers({}))) as http:
        meta = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert meta["registration_endpoint"] == ISSUER + "/register"
        resp = await http.post(
            "/register",
            json={
                "grant_types": ["client_credentials"],
                "scope": "read",
                "dpop_bound_access_tokens": True,
            },
        )
        assert resp.status_code == 201
        assert resp.headers["cache-control"] == "no-store"
        reg = resp.json()
        assert reg["dpop_bound_access_tokens"] is True
        stored = store.get_client(reg["client_id"])
        assert stored is not None
        assert stored.secret_hash is not None
        assert reg["client_secret"] not in stored.secret_hash
        key = DPoPKey.generate("ES256")
        headers = {"Authorization": basic(reg["client_id"], reg["client_secret"])}
        no_proof = await http.post(
            "/token", data={"grant_type": "client_credentials"}, headers=headers
        )
        assert no_proof.json()["error"] == "invalid_dpop_proof"
        ok = await http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={**headers, "DPoP": _proof(clock, key)},
        )
        assert ok.status_code == 200


@pytest.mark.parametrize(
    "meta",
    [
        {"redirect_uris": ["http://evil.test/cb"]},
        {"redirect_uris": ["https://ok.test/cb#frag"]},
        {"token_endpoint_auth_method": "client_secret_jwt"},
        {"grant_types": ["password"]},
        {"token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"]},
        {"grant_types": ["client_credentials"], "jwks": {"keys": [{"kty": "EC", "d": "x"}]}},
    ],
)
async def test_registration_rejects_bad_metadata(
    store: SQLGrantStore, clock: Clock, meta: dict[str, Any]
) -> None:
    """RFC 7591 §3.2.2: invalid metadata → 400 invalid_client_metadata / invalid_redirect_uri."""
    svc = make_service(store, clock, registration_enabled=True)
    async with _client(create_app(svc, authenticator=ConfigUsers({}))) as http:
        resp = await http.post(
            "/register", content=json.dumps(meta), headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 400
        assert resp.json()["error"] in {"invalid_client_metadata", "invalid_redirect_uri"}


async def test_x16_metadata_for_issuer_with_path(store: SQLGrantStore, clock: Clock) -> None:
    """X-16 / RFC 8414 §3.1: the well-known segment goes before the issuer's path."""
    svc = TokenService(
        ServerSettings(issuer="http://127.0.0.1:9/tenant-a"),
        store=store,
        replay=MemoryReplayCache(single_process=True),
        clock=clock,
    )
    app = create_app(svc, authenticator=ConfigUsers({}))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9") as http:
        resp = await http.get("/.well-known/oauth-authorization-server/tenant-a")
        assert resp.status_code == 200
        meta = resp.json()
        assert meta["issuer"] == "http://127.0.0.1:9/tenant-a"
        assert meta["token_endpoint"] == "http://127.0.0.1:9/tenant-a/token"
