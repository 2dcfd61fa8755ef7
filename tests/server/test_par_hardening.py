"""Pushed authorization requests (RFC 9126): ownership of a ``request_uri`` and one rule
for repeated parameters at ``/par`` and ``/authorize`` (RFC 6749 §3.1).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from dpopkit import RequestView, ResponseView
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.storage.sql import InteractionRecord, SQLGrantStore, sha256_hex

from .conftest import (
    AS,
    ISSUER,
    PAR_URL,
    REDIRECT,
    SECRET,
    USERS,
    body_of,
    error_of,
    form_request,
    pkce,
)


def _request_params() -> dict[str, str]:
    _, challenge = pkce()
    return {
        "response_type": "code",
        "client_id": "public",
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-1",
        "scope": "read",
    }


def _push(as_: AS, params: dict[str, Any]) -> ResponseView:
    return as_.service.handle_par(form_request(PAR_URL, params))


def _authorize(as_: AS, query: str) -> ResponseView:
    endpoint = AuthorizationEndpoint(as_.service, ConfigUsers(USERS))
    return endpoint.handle(RequestView(method="GET", url=ISSUER + "/authorize?" + query))


def _login_page(resp: ResponseView) -> bool:
    return resp.status == 200 and b'name="interaction"' in resp.body


# --- ownership ------------------------------------------------------------------------------


@pytest.mark.parametrize("intruder", ["conf", "noncey", "rs"])
def test_hd5_other_client_cannot_burn_request_uri(as_: AS, intruder: str) -> None:
    """HD-5: /authorize with another client's request_uri → 400 and the request_uri
    stays usable by its owner (RFC 9126 §4: bound to the client that pushed it)."""
    uri = body_of(_push(as_, _request_params()))["request_uri"]
    stolen = _authorize(as_, urlencode({"client_id": intruder, "request_uri": uri}))
    assert stolen.status == 400
    assert stolen.header("Location") is None
    owner = _authorize(as_, urlencode({"client_id": "public", "request_uri": uri}))
    assert _login_page(owner), owner.body
    again = _authorize(as_, urlencode({"client_id": "public", "request_uri": uri}))
    assert again.status == 400  # still one-time use for its owner


def test_hd5_store_consumes_only_for_the_owner(both_stores: SQLGrantStore, now: float) -> None:
    """HD-5: the grant store spends a request only for the client named (SQLite and
    PostgreSQL): another client's attempt changes nothing."""
    record = InteractionRecord(
        id_hash=sha256_hex("urn:x"),
        kind="par",
        client_id="owner",
        params={"state": "s"},
        expires_at=now + 60,
    )
    both_stores.put_request(record)
    assert (
        both_stores.consume_request(record.id_hash, kind="par", now=now, client_id="other") is None
    )
    live = both_stores.get_request(record.id_hash, kind="par", now=now)
    assert live is not None
    assert not live.used
    spent = both_stores.consume_request(record.id_hash, kind="par", now=now, client_id="owner")
    assert spent is not None
    assert spent.client_id == "owner"
    assert (
        both_stores.consume_request(record.id_hash, kind="par", now=now, client_id="owner") is None
    )


# --- repeated parameters ---------------------------------------------------------------------

#: Every parameter of an authorization request, plus an extension one (RFC 6749 §3.1:
#: unknown parameters are ignored, yet may not repeat either).
PARAMETERS = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "dpop_jkt",
    "prompt",
]


def _repeated(params: dict[str, str], name: str, as_: AS) -> dict[str, Any]:
    value = params.get(name) or {"dpop_jkt": as_.key.jkt, "prompt": "login"}[name]
    return {**params, name: [value, value]}


@pytest.mark.parametrize("name", PARAMETERS)
def test_hd5_par_refuses_every_repeated_parameter(as_: AS, name: str) -> None:
    """HD-5: /par refuses any repeated parameter, even with equal values (RFC 6749 §3.1,
    RFC 9126 §2.1) → 400 invalid_request, and no request_uri is made."""
    resp = _push(as_, _repeated(_request_params(), name, as_))
    assert resp.status == 400
    assert error_of(resp) == "invalid_request"


@pytest.mark.parametrize("name", PARAMETERS)
def test_hd5_authorize_refuses_every_repeated_parameter(as_: AS, name: str) -> None:
    """HD-5: /authorize refuses any repeated parameter by the same rule → an error
    page (400), never a redirect (RFC 6749 §3.1, §4.1.2.1)."""
    query = urlencode(_repeated(_request_params(), name, as_), doseq=True)
    resp = _authorize(as_, query)
    assert resp.status == 400
    assert resp.header("Location") is None


@pytest.mark.parametrize("name", ["request_uri", "client_id", "state", "prompt"])
def test_hd5_authorize_with_request_uri_refuses_repeats_and_keeps_it(as_: AS, name: str) -> None:
    """HD-5: /authorize with a request_uri refuses repeated parameters too, before the
    request_uri is spent: the owner can still use it."""
    uri = body_of(_push(as_, _request_params()))["request_uri"]
    query: dict[str, Any] = {"client_id": "public", "request_uri": uri}
    query[name] = [query.get(name, "x"), query.get(name, "x")]
    assert _authorize(as_, urlencode(query, doseq=True)).status == 400
    assert _login_page(_authorize(as_, urlencode({"client_id": "public", "request_uri": uri})))


@pytest.mark.parametrize("endpoint", ["/par", "/authorize"])
def test_hd5_resource_may_repeat_on_both(as_: AS, endpoint: str) -> None:
    """HD-5: resource is the one repeatable parameter (RFC 8707 §2), on both endpoints."""
    params: dict[str, Any] = {
        **_request_params(),
        "resource": ["https://a.test/", "https://b.test/"],
    }
    if endpoint == "/par":
        resp = _push(as_, params)
        assert resp.status == 201, resp.body
        uri = body_of(resp)["request_uri"]
        resp = _authorize(as_, urlencode({"client_id": "public", "request_uri": uri}))
    else:
        resp = _authorize(as_, urlencode(params, doseq=True))
    assert _login_page(resp), resp.body


@pytest.mark.parametrize("name", ["client_id", "client_secret"])
def test_hd5_par_refuses_repeated_client_credentials(as_: AS, name: str) -> None:
    """HD-5: the client authentication parameters may not repeat at /par either
    (RFC 6749 §3.2, §2.3.1) → 400 invalid_request before anything is stored."""
    params: dict[str, Any] = {
        **_request_params(),
        "client_id": "post",
        "client_secret": SECRET,
    }
    params[name] = [params[name], params[name]]
    resp = _push(as_, params)
    assert resp.status == 400
    assert error_of(resp) == "invalid_request"
