"""Client authentication methods at every authenticated endpoint (RFC 6749 §2.3, RFC 7523).

The registered ``token_endpoint_auth_method`` decides which credentials count. A
secret client may send its secret in a Basic header or in the body, unless it pins
its method with ``token_endpoint_auth_method_strict``; a secret never stands in for a
key assertion or for no authentication, nor the other way round. Two methods in one
request are ``invalid_request``.
"""

from __future__ import annotations

from typing import Any

import pytest

from dpopkit import DPoPKey, ResponseView
from dpopkit.server.jwt import SigningKey
from dpopkit.server.service import JWT_BEARER_ASSERTION
from dpopkit.storage.sql import ClientRecord, hash_secret

from .conftest import AS, ISSUER, SECRET, TOKEN_URL, basic, body_of, error_of, form_request

JWT_KEY = DPoPKey.generate("ES256")
JWKS = {"keys": [{**JWT_KEY.public_jwk, "kid": "k1"}]}

#: (client_id, registered method, strict). Every client holds a secret hash and a key,
#: so a method accepted across secret / key / none would verify and be caught here.
REGISTERED = [
    ("c-basic", "client_secret_basic", False),
    ("c-post", "client_secret_post", False),
    ("c-basic-strict", "client_secret_basic", True),
    ("c-post-strict", "client_secret_post", True),
    ("c-jwt", "private_key_jwt", False),
    ("c-none", "none", False),
]
PRESENTED = ["basic", "post", "jwt", "none", "basic+post", "post+jwt", "basic+jwt"]
SECRET_METHODS = {"client_secret_basic", "client_secret_post"}
METHOD_OF = {"basic": "client_secret_basic", "post": "client_secret_post", "jwt": "private_key_jwt"}


def _install(as_: AS) -> None:
    for client_id, method, strict in REGISTERED:
        as_.store.put_client(
            ClientRecord(
                client_id=client_id,
                token_endpoint_auth_method=method,
                token_endpoint_auth_method_strict=strict,
                secret_hash=hash_secret(SECRET),
                jwks=JWKS,
                grant_types=("refresh_token", "client_credentials"),
                scope="read",
                introspection_audiences=(ISSUER,) if method != "none" else (),
            )
        )


def _assertion(client_id: str, now: float, aud: str) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": f"{client_id}-{now}-{aud}",
        "iat": int(now),
        "exp": int(now) + 60,
    }
    return SigningKey("k1", JWT_KEY).sign(claims, typ="JWT")


def _credentials(
    presented: str, client_id: str, now: float, aud: str
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Form members and headers for ``presented`` (parts joined with ``+``)."""
    params: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for part in presented.split("+"):
        if part == "basic":
            headers.append(("Authorization", basic(client_id, SECRET)))
        elif part == "post":
            params.update(client_id=client_id, client_secret=SECRET)
        elif part == "jwt":
            params.update(
                client_assertion_type=JWT_BEARER_ASSERTION,
                client_assertion=_assertion(client_id, now, aud),
            )
        else:
            params["client_id"] = client_id
    return params, headers


def _expected(method: str, strict: bool, presented: str) -> str:
    """``ok``, ``invalid_client`` or ``invalid_request`` for one cell of the matrix."""
    if "+" in presented:
        return "invalid_request"  # RFC 6749 §2.3: one method per request
    used = METHOD_OF.get(presented, "none")
    if used == method:
        return "ok"
    if not strict and used in SECRET_METHODS and method in SECRET_METHODS:
        return "ok"
    return "invalid_client"


def _outcome(resp: ResponseView) -> str:
    """``ok`` when the client authenticated (the bogus refresh token is then invalid_grant)."""
    error = error_of(resp)
    if error == "invalid_grant":
        return "ok"
    assert resp.status == (401 if error == "invalid_client" else 400)
    return error


@pytest.mark.parametrize("presented", PRESENTED)
@pytest.mark.parametrize(("client_id", "method", "strict"), REGISTERED)
def test_hd8_registered_method_times_presented_method(
    as_: AS, client_id: str, method: str, strict: bool, presented: str
) -> None:
    """HD-8: registered × presented method at /token (RFC 6749 §2.3, §2.3.1; RFC 7523 §3).

    Basic and post stand in for each other for a secret client unless it is strict;
    never across secret, private_key_jwt and none; two methods at once are
    invalid_request. Authentication passing is seen as invalid_grant for a bogus
    refresh token, failing as 401 invalid_client.
    """
    _install(as_)
    params, headers = _credentials(presented, client_id, as_.clock.now, TOKEN_URL)
    resp = as_.service.handle_token(
        form_request(
            TOKEN_URL,
            {"grant_type": "refresh_token", "refresh_token": "bogus", **params},
            headers=headers,
        )
    )
    assert _outcome(resp) == _expected(method, strict, presented)


def _call(as_: AS, endpoint: str, params: dict[str, str], headers: list[tuple[str, str]]) -> Any:
    svc = as_.service
    handler = {
        "/token": svc.handle_token,
        "/par": svc.handle_par,
        "/introspect": svc.handle_introspect,
        "/revoke": svc.handle_revoke,
    }[endpoint]
    body = {
        "/token": {"grant_type": "client_credentials"},
        "/par": {"response_type": "code"},  # authenticated, then invalid_request
        "/introspect": {"token": "x"},
        "/revoke": {"token": "x"},
    }[endpoint]
    return handler(form_request(ISSUER + endpoint, {**body, **params}, headers=headers))


ENDPOINTS = ["/token", "/par", "/introspect", "/revoke"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("client_id", "presented"),
    [
        ("c-basic", "post"),
        ("c-post", "basic"),
        ("c-basic-strict", "post"),
        ("c-post-strict", "basic"),
    ],
)
def test_hd8_every_endpoint_applies_the_same_rule(
    as_: AS, endpoint: str, client_id: str, presented: str
) -> None:
    """HD-8: /token, /par, /introspect and /revoke share one client-authentication rule:
    the other secret method is accepted, except for a strict client (401 invalid_client)."""
    _install(as_)
    strict = client_id.endswith("-strict")
    params, headers = _credentials(presented, client_id, as_.clock.now, ISSUER + endpoint)
    resp = _call(as_, endpoint, params, headers)
    if strict:
        assert resp.status == 401
        assert error_of(resp) == "invalid_client"
    elif endpoint == "/par":
        assert error_of(resp) == "invalid_request"  # authenticated; the request is incomplete
    else:
        assert resp.status == 200, resp.body


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_hd8_basic_header_and_body_secret_together_is_invalid_request(
    as_: AS, endpoint: str
) -> None:
    """HD-8: a Basic header and a body client_secret in one request → 400 invalid_request
    at every endpoint (RFC 6749 §2.3: one authentication method per request)."""
    _install(as_)
    params, headers = _credentials("basic+post", "c-basic", as_.clock.now, ISSUER + endpoint)
    resp = _call(as_, endpoint, params, headers)
    assert resp.status == 400
    assert error_of(resp) == "invalid_request"


def test_hd8_cross_method_issues_a_real_token(as_: AS) -> None:
    """HD-8: a client_secret_basic client posting its secret in the body gets a token."""
    _install(as_)
    proof = as_.proof()
    resp = as_.service.handle_token(
        form_request(
            TOKEN_URL,
            {"grant_type": "client_credentials", "client_id": "c-basic", "client_secret": SECRET},
            headers=[("DPoP", proof)],
        )
    )
    assert resp.status == 200, resp.body
    assert body_of(resp)["token_type"] == "DPoP"
