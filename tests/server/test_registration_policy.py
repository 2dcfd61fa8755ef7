"""Open dynamic registration widens nothing the server did not allow (RFC 7591 §3.2.2).

Every metadata value a registrant controls that could widen its privileges is
tried end to end over the real ASGI app: register, then try to obtain the wider
token; the answer is ``invalid_client_metadata`` at registration or
``invalid_scope`` / ``invalid_target`` / ``invalid_dpop_proof`` at the token or
authorization endpoint. ``/register`` is rate limited per client address (429,
``Retry-After``, RFC 6585 §4).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from dpopkit import DPoPKey, RequestView, create_proof
from dpopkit.server.app import create_app
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.storage.sql import SQLGrantStore

from .conftest import (
    AS,
    ISSUER,
    PAR_URL,
    REDIRECT,
    SECRET,
    TOKEN_URL,
    USERS,
    Clock,
    authorize_params,
    basic,
    code_from,
    code_params,
    drive_login,
    error_of,
    form_request,
    jwt_parts,
    make_service,
    pkce,
)

pytestmark = pytest.mark.anyio

API = "https://api.example"
EVIL = "https://evil.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Factory = Callable[..., Any]


@pytest.fixture
def server(store: SQLGrantStore, clock: Clock) -> Factory:
    """An app factory: ``async with server(**settings)(ip) as (http, service)``."""

    def make(**settings: Any) -> Any:
        settings.setdefault("registration_enabled", True)
        service = make_service(store, clock, **settings)
        app = create_app(service, authenticator=ConfigUsers(USERS))

        @asynccontextmanager
        async def connect(ip: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
            transport = httpx.ASGITransport(app=app, client=(ip, 50000))
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
                yield http

        return connect, service

    return make


def _proof(clock: Clock, key: DPoPKey) -> str:
    return create_proof(key, htm="POST", htu=TOKEN_URL, now=clock.now, allow_insecure_http=True)


async def _cc_token(
    http: httpx.AsyncClient, clock: Clock, reg: dict[str, Any], **form: str
) -> httpx.Response:
    return await http.post(
        "/token",
        data={"grant_type": "client_credentials", **form},
        headers={
            "Authorization": basic(reg["client_id"], reg["client_secret"]),
            "DPoP": _proof(clock, DPoPKey.generate("ES256")),
        },
    )


MACHINE = {
    "grant_types": ["client_credentials"],
    "token_endpoint_auth_method": "client_secret_basic",
}


@pytest.mark.parametrize(
    ("meta", "policy"),
    [
        # scope: nothing by default, only the allow-list otherwise
        ({**MACHINE, "scope": "admin"}, {}),
        ({**MACHINE, "scope": "read admin"}, {"registration_allowed_scopes": ("read",)}),
        ({**MACHINE, "scope": "read"}, {}),
        # grant_types: client_credentials (no user, no consent) only when allowed
        ({"grant_types": ["client_credentials"]}, {"registration_allowed_scopes": ("read",)}),
        ({"grant_types": ["password"], "redirect_uris": [REDIRECT]}, {}),
        ({"grant_types": ["authorization_code", "implicit"], "redirect_uris": [REDIRECT]}, {}),
        # DPoP binding: an explicit opt-out is refused unless the server allows it
        ({"redirect_uris": [REDIRECT], "dpop_bound_access_tokens": False}, {}),
        ({"redirect_uris": [REDIRECT], "dpop_bound_access_tokens": "false"}, {}),
        # token_endpoint_auth_method: a public client cannot become a machine client
        (
            {"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"},
            {"registration_allowed_grant_types": ("client_credentials",)},
        ),
        ({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_jwt"}, {}),
        # response_types other than code
        ({"redirect_uris": [REDIRECT], "response_types": ["token"]}, {}),
    ],
)
async def test_hd2_registration_refuses_widening_metadata(
    server: Factory, meta: dict[str, Any], policy: dict[str, Any]
) -> None:
    """HD-2: metadata outside the server's registration policy → 400
    ``invalid_client_metadata`` (RFC 7591 §3.2.2) and no client is stored."""
    connect, _ = server(**policy)
    async with connect() as http:
        resp = await http.post("/register", json=meta)
    assert resp.status_code == 400, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.json()["error"] == "invalid_client_metadata"


async def test_hd2_scope_beyond_registration_refused_at_token(
    server: Factory, clock: Clock
) -> None:
    """HD-2: a registered client holds only allow-listed scopes; asking the token
    endpoint for more is ``invalid_scope`` (RFC 6749 §5.2)."""
    connect, _ = server(
        registration_allowed_scopes=("read",),
        registration_allowed_grant_types=("client_credentials",),
    )
    async with connect() as http:
        reg = (await http.post("/register", json=MACHINE)).json()
        assert reg["scope"] == "read"  # omitted scope: the allow-list
        wider = await _cc_token(http, clock, reg, scope="read admin")
        assert wider.status_code == 400
        assert wider.json()["error"] == "invalid_scope"
        ok = await _cc_token(http, clock, reg, scope="read")
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("audiences", [(), (API,)])
async def test_hd2_audience_limited_for_client_credentials(
    server: Factory, clock: Clock, audiences: tuple[str, ...]
) -> None:
    """HD-2: a registered client names only the server's audiences (RFC 8707 §2,
    ``invalid_target``), whatever it put in its metadata; a configured client is
    unaffected."""
    connect, service = server(
        registration_allowed_scopes=("read",),
        registration_allowed_grant_types=("client_credentials",),
        registration_allowed_audiences=audiences,
    )
    allowed = audiences or service.settings.aud
    async with connect() as http:
        resp = await http.post("/register", json={**MACHINE, "resource": EVIL, "audience": EVIL})
        assert resp.status_code == 201, resp.text
        reg = resp.json()
        evil = await _cc_token(http, clock, reg, resource=EVIL)
        assert evil.status_code == 400
        assert evil.json()["error"] == "invalid_target"
        ok = await _cc_token(http, clock, reg, resource=allowed[0])
        assert ok.status_code == 200, ok.text
        assert jwt_parts(ok.json()["access_token"])[1]["aud"] == allowed[0]
        default = await _cc_token(http, clock, reg)
        assert jwt_parts(default.json()["access_token"])[1]["aud"] == service.settings.aud[0]
        # A configured client is not a registered one: no such limit.
        configured = await http.post(
            "/token",
            data={"grant_type": "client_credentials", "resource": EVIL},
            headers={"Authorization": basic("conf", SECRET)},
        )
        assert configured.status_code == 200, configured.text


async def test_hd2_audience_limited_for_code_and_refresh(
    server: Factory, store: SQLGrantStore, clock: Clock
) -> None:
    """HD-2: the same audience limit at ``/authorize`` (error redirect, RFC 6749
    §4.1.2.1), at ``/par``, at the code exchange and at refresh (RFC 8707 §2
    ``invalid_target``)."""
    connect, service = server(registration_allowed_scopes=("read",))
    async with connect() as http:
        resp = await http.post(
            "/register",
            json={
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        assert resp.status_code == 201, resp.text
        reg = resp.json()
    assert reg["dpop_bound_access_tokens"] is True  # RFC 9449 §5.2, by default
    client_id = reg["client_id"]
    endpoint = AuthorizationEndpoint(service, ConfigUsers(USERS))
    verifier, challenge = pkce()
    url = ISSUER + "/authorize?" + urlencode(authorize_params(client_id, challenge, resource=EVIL))
    start = endpoint.handle(RequestView(method="GET", url=url))
    assert start.status == 303
    query = parse_qs(urlsplit(start.header("Location") or "").query)
    assert query["error"] == ["invalid_target"]

    as_ = AS(service, store, clock)
    par = service.handle_par(
        form_request(
            PAR_URL,
            {**authorize_params(client_id, challenge), "resource": EVIL},
            headers=[("DPoP", as_.proof(url=PAR_URL))],
        )
    )
    assert error_of(par) == "invalid_target"

    url = ISSUER + "/authorize?" + urlencode(authorize_params(client_id, challenge))
    code = code_from(drive_login(endpoint, url))
    evil = as_.token({**code_params(code, verifier, client_id), "resource": EVIL}, client=None)
    assert error_of(evil) == "invalid_target"
    ok = as_.token(code_params(code, verifier, client_id), client=None)
    assert ok.status == 200, ok.body
    refresh = as_.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": json.loads(ok.body)["refresh_token"],
            "client_id": client_id,
            "resource": EVIL,
        },
        client=None,
    )
    assert error_of(refresh) == "invalid_target"


async def test_hd2_dpop_binding_by_default(server: Factory, clock: Clock) -> None:
    """HD-2: a registered client is DPoP-bound unless the server allows otherwise
    (RFC 9449 §5.2): without a proof the token endpoint answers ``invalid_dpop_proof``."""
    policy = {
        "registration_allowed_scopes": ("read",),
        "registration_allowed_grant_types": ("client_credentials",),
    }
    connect, _ = server(**policy)
    async with connect() as http:
        reg = (await http.post("/register", json=MACHINE)).json()
        assert reg["dpop_bound_access_tokens"] is True
        bare = await http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(reg["client_id"], reg["client_secret"])},
        )
        assert bare.status_code == 400
        assert bare.json()["error"] == "invalid_dpop_proof"
    connect, _ = server(**policy, registration_allow_unbound_tokens=True)
    async with connect() as http:
        resp = await http.post("/register", json={**MACHINE, "dpop_bound_access_tokens": False})
        assert resp.status_code == 201, resp.text
        assert resp.json()["dpop_bound_access_tokens"] is False


async def test_hd2_registrant_cannot_choose_client_id_or_secret(
    server: Factory, store: SQLGrantStore, clock: Clock
) -> None:
    """HD-2: ``client_id`` and ``client_secret`` in the metadata are ignored (RFC 7591
    §3.2.1: the server issues them); an existing client is never replaced."""
    connect, _ = server(
        registration_allowed_scopes=("read",),
        registration_allowed_grant_types=("client_credentials",),
    )
    async with connect() as http:
        meta = {**MACHINE, "client_id": "conf", "client_secret": "attacker-chosen"}
        reg = (await http.post("/register", json=meta)).json()
        assert reg["client_id"] != "conf"
        assert reg["client_secret"] != "attacker-chosen"
        hijack = await http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic("conf", "attacker-chosen")},
        )
        assert hijack.status_code == 401
        assert hijack.json()["error"] == "invalid_client"
    conf = store.get_client("conf")
    assert conf is not None
    assert not conf.registered
    assert conf.scope == "read write"


async def test_hd2_register_rate_limited_per_address(server: Factory, clock: Clock) -> None:
    """HD-2: ``registration_rate_limit`` registrations per address and hour, then 429
    with ``Retry-After`` (RFC 6585 §4); other addresses are unaffected; the window
    passes on the service clock."""
    connect, _ = server(registration_rate_limit=2)
    meta = {"redirect_uris": [REDIRECT]}
    async with connect("198.51.100.1") as http:
        for _ in range(2):
            assert (await http.post("/register", json=meta)).status_code == 201
        limited = await http.post("/register", json=meta)
        assert limited.status_code == 429
        assert limited.json()["error"] == "temporarily_unavailable"
        assert limited.headers["cache-control"] == "no-store"
        assert 1 <= int(limited.headers["retry-after"]) <= 3600
    async with connect("198.51.100.2") as other:
        assert (await other.post("/register", json=meta)).status_code == 201
    clock.now += 3601
    async with connect("198.51.100.1") as http:
        assert (await http.post("/register", json=meta)).status_code == 201


def test_hd2_registration_policy_from_toml(tmp_path: Any) -> None:
    """HD-2: the policy is read from the TOML file; a wrong type is one ConfigError line."""
    from dpopkit.server.config import ConfigError, load_config

    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://127.0.0.1:9"\nregistration_enabled = true\n'
        'registration_allowed_scopes = ["read"]\n'
        'registration_allowed_audiences = ["https://api.example"]\n'
        'registration_allowed_grant_types = ["authorization_code"]\n'
        "registration_allow_unbound_tokens = true\nregistration_rate_limit = 5\n"
    )
    settings = load_config(path, data_dir=tmp_path).settings
    assert settings["registration_allowed_scopes"] == ("read",)
    assert settings["registration_allowed_audiences"] == ("https://api.example",)
    assert settings["registration_allowed_grant_types"] == ("authorization_code",)
    assert settings["registration_allow_unbound_tokens"] is True
    assert settings["registration_rate_limit"] == 5
    path.write_text('issuer = "http://127.0.0.1:9"\nregistration_allowed_scopes = "read"\n')
    with pytest.raises(ConfigError):
        load_config(path, data_dir=tmp_path)
