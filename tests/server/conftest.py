"""Fixtures for the authorization server: a token service on a real SQLite file."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from dpopkit import DPoPKey, Headers, NonceIssuer, RequestView, ResponseView, create_proof
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.server.service import ServerSettings, TokenService
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret

ISSUER = "http://as.test"
TOKEN_URL = ISSUER + "/token"
PAR_URL = ISSUER + "/par"
REDIRECT = "https://client.test/cb"
SECRET = "s3cret-s3cret-s3cret"


class Clock:
    """A settable clock injected into the service."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def form_request(
    url: str,
    params: dict[str, Any],
    *,
    headers: list[tuple[str, str]] | None = None,
) -> RequestView:
    body = urlencode(params, doseq=True).encode()
    hdrs = [("Content-Type", "application/x-www-form-urlencoded"), *(headers or [])]
    return RequestView(method="POST", url=url, headers=Headers(hdrs), body=body)


def body_of(resp: ResponseView) -> dict[str, Any]:
    data = json.loads(resp.body)
    assert isinstance(data, dict)
    return data


def error_of(resp: ResponseView) -> str:
    """The wire error code, after checking the AS error shape (400/401/503 JSON, no-store)."""
    assert resp.status in (400, 401, 503), resp.status
    assert resp.header("Cache-Control") == "no-store"
    assert resp.header("Content-Type") == "application/json"
    return str(body_of(resp)["error"])


CLIENTS = [
    ClientRecord(
        client_id="conf",
        secret_hash=hash_secret(SECRET),
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials", "authorization_code", "refresh_token"),
        redirect_uris=(REDIRECT,),
        scope="read write",
    ),
    ClientRecord(
        client_id="post",
        secret_hash=hash_secret(SECRET),
        token_endpoint_auth_method="client_secret_post",
        grant_types=("client_credentials",),
        scope="read",
    ),
    ClientRecord(
        client_id="public",
        token_endpoint_auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=(REDIRECT,),
        scope="read write",
    ),
    ClientRecord(
        client_id="bound",
        secret_hash=hash_secret(SECRET),
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials",),
        scope="read",
        dpop_bound_access_tokens=True,
    ),
    ClientRecord(
        # A resource server's client: may introspect tokens for the default audience.
        client_id="rs",
        secret_hash=hash_secret(SECRET),
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials",),
        introspection_audiences=(ISSUER,),
    ),
    ClientRecord(
        client_id="noncey",
        secret_hash=hash_secret(SECRET),
        token_endpoint_auth_method="client_secret_basic",
        grant_types=("client_credentials", "authorization_code", "refresh_token"),
        redirect_uris=(REDIRECT,),
        scope="read",
        dpop_nonce_required=True,
    ),
]


@dataclass
class AS:
    service: TokenService
    store: SQLGrantStore
    clock: Clock
    key: DPoPKey = field(default_factory=lambda: DPoPKey.generate("ES256"))

    def proof(self, key: DPoPKey | None = None, *, url: str = TOKEN_URL, **kw: Any) -> str:
        kw.setdefault("now", self.clock.now)
        return create_proof(key or self.key, htm="POST", htu=url, allow_insecure_http=True, **kw)

    def token(
        self,
        params: dict[str, Any],
        *,
        client: str | None = "conf",
        proof: str | bool | None = True,
        headers: list[tuple[str, str]] | None = None,
    ) -> ResponseView:
        hdrs = list(headers or [])
        if client is not None:
            hdrs.append(("Authorization", basic(client, SECRET)))
        if proof is True:
            hdrs.append(("DPoP", self.proof()))
        elif isinstance(proof, str):
            hdrs.append(("DPoP", proof))
        return self.service.handle_token(form_request(TOKEN_URL, params, headers=hdrs))

    def introspect(self, token: str, client: str = "rs") -> dict[str, Any]:
        """The /introspect answer (RFC 7662 §2.2) for ``client``, after its 200 shape."""
        resp = self.service.handle_introspect(
            form_request(
                ISSUER + "/introspect",
                {"token": token},
                headers=[("Authorization", basic(client, SECRET))],
            )
        )
        assert resp.status == 200
        assert resp.header("Cache-Control") == "no-store"
        return body_of(resp)

    def revoke(self, token: str, client: str = "conf") -> None:
        """Revoke ``token`` as ``client`` at /revoke (RFC 7009 §2.2: always 200)."""
        resp = self.service.handle_revoke(
            form_request(
                ISSUER + "/revoke",
                {"token": token},
                headers=[("Authorization", basic(client, SECRET))],
            )
        )
        assert resp.status == 200


def make_service(store: SQLGrantStore, clock: Clock, **settings: Any) -> TokenService:
    nonce_policy = settings.get("nonce_policy", "off")
    nonces = NonceIssuer([b"n" * 32], context="as") if nonce_policy != "off" else None
    svc = TokenService(
        ServerSettings(issuer=ISSUER, **settings),
        store=store,
        replay=MemoryReplayCache(single_process=True),
        nonces=nonces,
        clock=clock,
    )
    for client in CLIENTS:
        store.put_client(client)
    return svc


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/grants.db"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SQLGrantStore]:
    s = SQLGrantStore(sqlite_url)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def both_stores(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[SQLGrantStore]:
    """The grant store on SQLite, then on a real PostgreSQL (own table prefix, dropped)."""
    if request.param == "sqlite":
        store = SQLGrantStore(sqlite_url)
        yield store
        store.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    prefix = request.getfixturevalue("unique_prefix")
    store = SQLGrantStore(dsn, table_prefix=f"{prefix}_")
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


@pytest.fixture
def clock(now: float) -> Clock:
    return Clock(now)


@pytest.fixture
def as_(store: SQLGrantStore, clock: Clock) -> AS:
    return AS(make_service(store, clock), store, clock)


@pytest.fixture
def as_opaque(store: SQLGrantStore, clock: Clock) -> AS:
    """An AS issuing opaque access tokens: every token it issues is a row in the store."""
    return AS(make_service(store, clock, access_token_format="opaque"), store, clock)


@pytest.fixture
def as_nonce(store: SQLGrantStore, clock: Clock) -> AS:
    return AS(make_service(store, clock, nonce_policy="always"), store, clock)


ALICE_PASSWORD = "correct horse battery"
USERS = {"alice": hash_secret(ALICE_PASSWORD)}
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


def authorize_params(client_id: str, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-1",
        **extra,
    }


def drive_login(endpoint: AuthorizationEndpoint, url: str) -> ResponseView:
    """GET the authorize URL, sign in as alice, allow; return the final redirect."""
    page = endpoint.handle(RequestView(method="GET", url=url))
    assert page.status == 200, page.body
    cookie = (page.header("Set-Cookie") or "").split(";")[0]
    fields = hidden_fields(page.body.decode())
    login = endpoint.handle(
        form_request(
            ISSUER + "/authorize",
            {**fields, "username": "alice", "password": ALICE_PASSWORD, "action": "login"},
            headers=[("Cookie", cookie)],
        )
    )
    assert login.status == 200, login.body
    fields = hidden_fields(login.body.decode())
    return endpoint.handle(
        form_request(
            ISSUER + "/authorize", {**fields, "action": "approve"}, headers=[("Cookie", cookie)]
        )
    )


def code_from(resp: ResponseView) -> str:
    assert resp.status == 303
    query = parse_qs(urlsplit(resp.header("Location") or "").query)
    assert query["iss"] == [ISSUER]
    assert query["state"] == ["st-1"]
    return query["code"][0]


def get_code(as_: AS, client_id: str = "public", **extra: str) -> tuple[str, str]:
    """Run the authorization request through the real endpoint; return (code, verifier)."""
    verifier, challenge = pkce()
    endpoint = AuthorizationEndpoint(as_.service, ConfigUsers(USERS))
    url = ISSUER + "/authorize?" + urlencode(authorize_params(client_id, challenge, **extra))
    return code_from(drive_login(endpoint, url)), verifier


def code_params(code: str, verifier: str, client_id: str = "public") -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")

    def pad(s: str) -> str:
        return s + "=" * (-len(s) % 4)

    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
    )
