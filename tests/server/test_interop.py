"""requests-oauth2client against our AS under uvicorn; joserfc verifies our JWTs.

Covers AS-1..AS-3, AS-12, AS-18, AS-21, AS-23..AS-24 and AS-6 end to end over real HTTP,
with the configuration file path of ``dpopkit serve`` (TOML → app).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from requests_oauth2client import (
    ClientSecretBasic,
    ClientSecretPost,
    DPoPToken,
    InvalidClient,
    InvalidGrant,
    OAuth2Client,
    PrivateKeyJwt,
)

from dpopkit import DPoPKey
from dpopkit.server.config import build_server, load_config
from tests.live import serve_in_thread

from .conftest import hidden_fields

CALLBACK = "http://127.0.0.1:8765/callback"
PASSWORD = "interop password"

CONFIG = """
issuer = "{issuer}"
replay_url = "memory"
cors_origins = ["*"]

[dpop]
nonce = "per_client"

[[users]]
username = "alice"
password = "{password}"

[[clients]]
client_id = "rp"
client_secret = "rp-secret-value"
token_endpoint_auth_method = "client_secret_basic"
grant_types = ["client_credentials", "authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read write"
dpop_bound_access_tokens = true
dpop_nonce_required = true

[[clients]]
client_id = "rp-strict"
client_secret = "rp-strict-secret-value"
token_endpoint_auth_method = "client_secret_basic"
token_endpoint_auth_method_strict = true
grant_types = ["client_credentials"]
scope = "read"

[[clients]]
client_id = "spa"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read"
require_pushed_authorization_requests = true
"""


JWT_KEY = DPoPKey.generate("ES256")


def _jwt_client_block() -> str:
    pub = JWT_KEY.public_jwk
    members = ", ".join(f'{k} = "{v}"' for k, v in {**pub, "kid": "k1"}.items())
    return (
        '\n[[clients]]\nclient_id = "jwt-rp"\ntoken_endpoint_auth_method = "private_key_jwt"\n'
        'grant_types = ["client_credentials"]\nscope = "read"\n'
        f"jwks = {{ keys = [{{ {members} }}] }}\n"
    )


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("as")

    def build(base: str) -> Any:
        path = data / "as.toml"
        text = CONFIG.format(issuer=base, password=PASSWORD, callback=CALLBACK)
        path.write_text(text + _jwt_client_block())
        config = load_config(path, data_dir=data)
        app, service = build_server(config)
        services.append(service)
        return app

    services: list[Any] = []
    with serve_in_thread(build) as base:
        yield base
    for service in services:
        service.close()


def _client(issuer: str, client_id: str = "rp", secret: str | None = "rp-secret-value") -> Any:
    auth: Any = ClientSecretBasic(client_id, secret) if secret else client_id
    return OAuth2Client.from_discovery_endpoint(
        issuer + "/.well-known/oauth-authorization-server",  # RFC 8414 §3
        issuer=issuer,
        auth=auth,
        redirect_uri=CALLBACK,
        testing=True,
    )


def _verify_with_joserfc(issuer: str, token: str) -> dict[str, Any]:
    jwks = requests.get(issuer + "/jwks", timeout=5).json()
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    claims: dict[str, Any] = dict(decoded.claims)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
        sub={"essential": True},
        aud={"essential": True},
        client_id={"essential": True},
    ).validate(claims)
    return claims


def _login(authorize_url: str) -> str:
    """Drive the HTML login and consent forms over HTTP; return the redirect URL."""
    browser = requests.Session()
    page = browser.get(authorize_url, timeout=5, allow_redirects=False)
    assert page.status_code == 200, page.text
    login = browser.post(
        re.sub(r"\?.*$", "", authorize_url),
        data={**hidden_fields(page.text), "username": "alice", "password": PASSWORD},
        timeout=5,
        allow_redirects=False,
    )
    assert login.status_code == 200, login.text
    done = browser.post(
        re.sub(r"\?.*$", "", authorize_url),
        data={**hidden_fields(login.text), "action": "approve"},
        timeout=5,
        allow_redirects=False,
    )
    assert done.status_code == 303
    return str(done.headers["Location"])


def test_interop_client_credentials_dpop_with_nonce(issuer: str) -> None:
    """AS-1..AS-3, AS-12, AS-18: the client retries on use_dpop_nonce, gets a DPoP token."""
    client = _client(issuer)
    token = client.client_credentials(scope="read", dpop=True)
    assert isinstance(token, DPoPToken)
    assert token.token_type.lower() == "dpop"
    claims = _verify_with_joserfc(issuer, token.access_token)
    assert claims["cnf"]["jkt"] == token.dpop_key.private_key.thumbprint()
    assert claims["scope"] == "read"


def test_interop_code_pkce_par_dpop_jkt_and_refresh(issuer: str) -> None:
    """AS-21, AS-23, AS-24, AS-6: PAR with DPoP + dpop_jkt, login form, code, refresh, same key."""
    client = _client(issuer, "spa", None)
    azr = client.authorization_request(scope="read", dpop=True)
    par = client.pushed_authorization_request(azr)
    callback = _login(str(par.uri))
    response = azr.validate_callback(callback)  # checks state and iss (RFC 9207)
    token = client.authorization_code(response)
    assert isinstance(token, DPoPToken)
    jkt = azr.dpop_key.private_key.thumbprint()
    claims = _verify_with_joserfc(issuer, token.access_token)
    assert claims["cnf"]["jkt"] == jkt
    assert claims["sub"] == "alice"
    refreshed = client.refresh_token(token)
    assert isinstance(refresh := refreshed, DPoPToken)
    assert refresh.refresh_token != token.refresh_token
    assert _verify_with_joserfc(issuer, refresh.access_token)["cnf"]["jkt"] == jkt
    # AS-6: the rotated-out refresh token is dead, and its reuse revoked the family.
    with pytest.raises(InvalidGrant):
        client.refresh_token(token)
    introspector = _client(issuer)
    assert introspector.introspect_token(refresh.access_token)["active"] is False


def test_interop_introspection_and_revocation(issuer: str) -> None:
    """AS-11 and RFC 7009 with the independent client."""
    client = _client(issuer)
    token = client.client_credentials(scope="read", dpop=True)
    info = client.introspect_token(token.access_token)
    assert info["active"] is True
    assert info["token_type"] == "DPoP"
    assert info["cnf"]["jkt"] == token.dpop_key.private_key.thumbprint()
    assert client.revoke_access_token(token.access_token) is True
    assert client.introspect_token(token.access_token) == {"active": False}


def test_interop_metadata_is_consistent(issuer: str) -> None:
    """AS-8, X-16: metadata issuer equals the issuer; algs match the policy."""
    meta = requests.get(issuer + "/.well-known/oauth-authorization-server", timeout=5).json()
    assert meta["issuer"] == issuer
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert "none" not in meta["dpop_signing_alg_values_supported"]


def test_interop_private_key_jwt(issuer: str) -> None:
    """RFC 7523: requests-oauth2client's private_key_jwt assertions authenticate the client."""
    private = {**JWT_KEY.private_jwk(), "kid": "k1"}
    client = OAuth2Client.from_discovery_endpoint(
        issuer + "/.well-known/oauth-authorization-server",
        issuer=issuer,
        auth=PrivateKeyJwt("jwt-rp", private),
        testing=True,
    )
    first = client.client_credentials(scope="read", dpop=True)
    second = client.client_credentials(scope="read", dpop=True)  # a new assertion jti each time
    assert isinstance(first, DPoPToken)
    assert _verify_with_joserfc(issuer, second.access_token)["client_id"] == "jwt-rp"


def test_hd8_interop_default_client_secret_post_against_basic_client(issuer: str) -> None:
    """HD-8: requests-oauth2client with its default authentication (a (client_id, secret)
    tuple is client_secret_post) gets a token from a client registered
    client_secret_basic (RFC 6749 §2.3.1); a strict client still refuses it."""
    client = OAuth2Client.from_discovery_endpoint(
        issuer + "/.well-known/oauth-authorization-server",
        issuer=issuer,
        auth=("rp", "rp-secret-value"),
        testing=True,
    )
    assert isinstance(client.auth, ClientSecretPost)  # the library's default
    token = client.client_credentials(scope="read", dpop=True)
    assert isinstance(token, DPoPToken)
    assert _verify_with_joserfc(issuer, token.access_token)["client_id"] == "rp"
    strict = OAuth2Client.from_discovery_endpoint(
        issuer + "/.well-known/oauth-authorization-server",
        issuer=issuer,
        auth=("rp-strict", "rp-strict-secret-value"),
        testing=True,
    )
    with pytest.raises(InvalidClient):
        strict.client_credentials(scope="read", dpop=True)
    pinned = _client(issuer, "rp-strict", "rp-strict-secret-value")  # ClientSecretBasic
    assert isinstance(pinned.client_credentials(scope="read", dpop=True), DPoPToken)
