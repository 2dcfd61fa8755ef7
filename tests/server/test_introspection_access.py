"""Who may learn that a token is active at /introspect (RFC 7662 §2.1, §2.2, §4).

Only the token's own client, or a client whose ``introspection_audiences`` names one
of the token's audiences (a resource server), gets ``active: true``; a refresh token
only its own client. Everyone else gets ``{"active": false}`` and nothing more, and a
public client is not authenticated at all (401 ``invalid_client``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpopkit import Headers, RequestView
from dpopkit.server.config import ConfigError, load_config
from dpopkit.server.registration import handle_register
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret

from .conftest import (
    AS,
    ISSUER,
    SECRET,
    Clock,
    basic,
    body_of,
    code_params,
    error_of,
    form_request,
    get_code,
    make_service,
)

API_A = "https://api-a.test/"
API_B = "https://api-b.test/"

#: Callers besides the owner ("conf") and the public client.
EXTRA_CLIENTS = [
    ClientRecord(
        client_id="rs-a",
        secret_hash=hash_secret(SECRET),
        grant_types=("client_credentials",),
        introspection_audiences=(API_A,),
    ),
    ClientRecord(
        client_id="rs-b",
        secret_hash=hash_secret(SECRET),
        grant_types=("client_credentials",),
        introspection_audiences=(API_B,),
    ),
]


def _server(store: SQLGrantStore, clock: Clock, fmt: str, **settings: Any) -> AS:
    svc = make_service(store, clock, access_token_format=fmt, audience=(API_A,), **settings)
    for client in EXTRA_CLIENTS:
        store.put_client(client)
    return AS(svc, store, clock)


def _introspect(as_: AS, token: str, caller: str) -> Any:
    headers: list[tuple[str, str]]
    if caller == "public":
        params, headers = {"token": token, "client_id": "public"}, []
    elif caller == "post":
        params, headers = {"token": token, "client_id": "post", "client_secret": SECRET}, []
    else:
        params, headers = {"token": token}, [("Authorization", basic(caller, SECRET))]
    return as_.service.handle_introspect(
        form_request(ISSUER + "/introspect", params, headers=headers)
    )


#: caller → (sees an access token of "conf" for API_A, sees its refresh token)
CALLERS = {
    "conf": (True, True),  # the token's own client
    "post": (False, False),  # another confidential client
    "rs-a": (True, False),  # allowed to introspect for the token's audience
    "rs-b": (False, False),  # allowed for another audience only
    "public": (None, None),  # not authenticated: 401 invalid_client
}


@pytest.mark.parametrize("caller", sorted(CALLERS))
@pytest.mark.parametrize("kind", ["jwt", "opaque", "refresh"])
def test_hd4_introspection_matrix(
    store: SQLGrantStore, clock: Clock, kind: str, caller: str
) -> None:
    """HD-4: token kind (JWT access, opaque access, refresh) × caller (own client, other
    client, RS allowed for the audience, RS allowed for another audience, public client).

    RFC 7662 §2.2: a caller not allowed to introspect a token gets {"active": false}
    and nothing else; §4: refresh tokens only for the client they were issued to.
    """
    as_ = _server(store, clock, "opaque" if kind == "opaque" else "jwt")
    code, verifier = get_code(as_, "conf")
    tokens = body_of(as_.token(code_params(code, verifier, "conf")))
    token = tokens["refresh_token" if kind == "refresh" else "access_token"]
    assert ("." in token) == (kind == "jwt")
    sees_access, sees_refresh = CALLERS[caller]
    resp = _introspect(as_, token, caller)
    if sees_access is None:
        assert resp.status == 401
        assert error_of(resp) == "invalid_client"
        return
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    body = body_of(resp)
    if sees_refresh if kind == "refresh" else sees_access:
        assert body["active"] is True
        assert body["client_id"] == "conf"
        assert body["token_type"] == ("refresh_token" if kind == "refresh" else "DPoP")
    else:
        assert body == {"active": False}


def test_hd4_token_with_several_audiences(store: SQLGrantStore, clock: Clock) -> None:
    """HD-4: a token for API_A and API_B is visible to an RS allowed for either one."""
    as_ = _server(store, clock, "jwt")
    resp = as_.token({"grant_type": "client_credentials", "resource": [API_A, API_B]})
    token = body_of(resp)["access_token"]
    for caller in ("rs-a", "rs-b", "conf"):
        assert body_of(_introspect(as_, token, caller))["active"] is True
    assert body_of(_introspect(as_, token, "post")) == {"active": False}


def test_hd4_registration_cannot_grant_introspection(store: SQLGrantStore, clock: Clock) -> None:
    """HD-4: introspection_audiences is an operator setting; a client registered at
    /register asking for it cannot introspect other clients' tokens (RFC 7591 §2:
    the server may ignore metadata it does not accept)."""
    as_ = _server(
        store,
        clock,
        "jwt",
        registration_enabled=True,
        registration_allowed_grant_types=("client_credentials",),
    )
    svc = as_.service
    meta = {
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_post",
        "introspection_audiences": [API_A],
    }
    resp = handle_register(
        svc,
        RequestView(
            method="POST",
            url=ISSUER + "/register",
            headers=Headers([("Content-Type", "application/json")]),
            body=json.dumps(meta).encode(),
        ),
    )
    assert resp.status == 201, resp.body
    registered = body_of(resp)
    assert "introspection_audiences" not in registered
    stored = store.get_client(registered["client_id"])
    assert stored is not None
    assert stored.introspection_audiences == ()
    token = body_of(as_.token({"grant_type": "client_credentials"}))["access_token"]
    info = as_.service.handle_introspect(
        form_request(
            ISSUER + "/introspect",
            {
                "token": token,
                "client_id": registered["client_id"],
                "client_secret": registered["client_secret"],
            },
        )
    )
    assert body_of(info) == {"active": False}


CONFIG = """
issuer = "http://127.0.0.1:1"
[[clients]]
client_id = "api"
client_secret = "api-secret-value"
grant_types = ["client_credentials"]
{extra}
"""


def test_hd4_config_reads_introspection_audiences(tmp_path: Path) -> None:
    """HD-4: introspection_audiences comes from the TOML file and survives the store."""
    path = tmp_path / "as.toml"
    path.write_text(CONFIG.format(extra=f'introspection_audiences = ["{API_A}", "{API_B}"]'))
    config = load_config(path, data_dir=tmp_path)
    (client,) = config.clients
    assert client.introspection_audiences == (API_A, API_B)
    store = SQLGrantStore(f"sqlite:///{tmp_path}/g.db")
    try:
        store.put_client(client)
        loaded = store.get_client("api")
        assert loaded is not None
        assert loaded.introspection_audiences == (API_A, API_B)
    finally:
        store.close()


@pytest.mark.parametrize(
    "extra",
    [
        'introspection_audiences = "https://api-a.test/"',
        "introspection_audiences = [1]",
        'introspection_audiences = [""]',
        'introspection_audiences = ["https://api-a.test/"]\ntoken_endpoint_auth_method = "none"',
    ],
)
def test_hd4_config_refuses_bad_introspection_audiences(tmp_path: Path, extra: str) -> None:
    """HD-4: a malformed list, or one on a public client (it cannot authenticate,
    RFC 7662 §2.1), is one ConfigError line."""
    path = tmp_path / "as.toml"
    path.write_text(CONFIG.format(extra=extra))
    with pytest.raises(ConfigError):
        load_config(path, data_dir=tmp_path)
