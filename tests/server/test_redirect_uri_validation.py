"""Redirect URIs: one validation for registration, the TOML file and ``/authorize``.

A corpus of hostile redirect URIs (control characters, non-ASCII, user
information, backslash tricks, fragments, bad ports, non-canonical forms) is
refused the same way at every entry point: ``invalid_redirect_uri`` at
``/register`` (RFC 7591 §3.2.2), one :class:`ConfigError` line for the
configuration file, an error page without ``Location`` at ``/authorize``
(RFC 6749 §4.1.2.1), never a 500 or a dropped connection. The RFC 8252 §7.3
any-port loopback rule applies to public (native) clients only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest

from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.config import ConfigError, load_config
from dpopkit.server.redirects import (
    InvalidRedirectURIError,
    redirect_uri_allowed,
    validate_redirect_uri,
)
from dpopkit.storage.sql import ClientRecord, SQLGrantStore

from .conftest import ISSUER, REDIRECT, USERS, Clock, make_service, pkce

HOSTILE = [
    "https://client.test/cb\t",
    "https://client.test/c\tb",
    "https://client.test/cb\r\nSet-Cookie: a=b",
    "https://client.test/cb\n",
    "https://client.test/cb\x00",
    "https://client.test/cb\x7f",
    "https://client.test/cb\u2028",
    "https://clïent.test/cb",
    "https://client.test/caf\u00e9",
    "https://client.test/c b",
    "https://client.test\\@evil.example/cb",
    "https://client.test\\\\@evil.example/cb",
    "https://client.test@evil.example/cb",
    "https://user:pw@client.test/cb",
    "https://@client.test/cb",
    "https://client.test/cb#frag",
    "https://client.test/cb#",
    "https://client.test/cb?",
    "https://client.test:0/cb",
    "https://client.test:99999/cb",
    "https://client.test:/cb",
    "https://client.test:8a/cb",
    "https://client.test/<script>",
    'https://client.test/"x"',
    "https://client.test/cb?a={b}",
    "https://client.test/cb|x",
    "https://client.test/%zz",
    "https://client.test/cb%",
    "https://[::1/cb",
    "https://client.test/[x]",
    "HTTPS://client.test/cb",
    "http://evil.example/cb",
    "javascript:alert(1)",
    "//client.test/cb",
    "/cb",
    "",
    "https:///cb",
    "https://client.test" + "/a" * 1100,
]

VALID = [
    REDIRECT,
    "https://client.test/cb?x=1&y=%20",
    "https://client.test:8443/a/b",
    "http://127.0.0.1:8765/cb",
    "http://[::1]/cb",
    "http://localhost:3000/cb",
]


@pytest.mark.parametrize("uri", HOSTILE)
def test_hd6_validator_refuses_hostile(uri: str) -> None:
    """HD-6: the one validator refuses every hostile redirect URI (RFC 3986 §2,
    RFC 6749 §3.1.2) with a typed error."""
    with pytest.raises(InvalidRedirectURIError) as info:
        validate_redirect_uri(uri)
    assert info.value.error == "invalid_redirect_uri"


@pytest.mark.parametrize("uri", VALID)
def test_hd6_validator_returns_exactly_what_it_checked(uri: str) -> None:
    """HD-6: an accepted URI comes back unchanged (it is stored as validated)."""
    assert validate_redirect_uri(uri) == uri


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http(store: SQLGrantStore, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    service = make_service(store, clock, registration_enabled=True)
    app = create_app(service, authenticator=ConfigUsers(USERS))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("uri", HOSTILE)
async def test_hd6_registration_refuses_hostile(http: httpx.AsyncClient, uri: str) -> None:
    """HD-6: ``/register`` answers 400 ``invalid_redirect_uri`` (RFC 7591 §3.2.2).

    A control character is refused earlier, by the parsing layer that checks every JSON
    string (HD-7), as ``invalid_client_metadata``; either way nothing is stored.
    """
    resp = await http.post("/register", json={"redirect_uris": [REDIRECT, uri]})
    assert resp.status_code == 400, resp.text
    # RFC 6749 Appendix A admits TAB in parameter values: that one reaches the validator.
    control = any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in uri)
    expected = "invalid_client_metadata" if control else "invalid_redirect_uri"
    assert resp.json()["error"] == expected


@pytest.mark.anyio
@pytest.mark.parametrize("uri", VALID)
async def test_hd6_registration_stores_what_it_validated(
    http: httpx.AsyncClient, store: SQLGrantStore, uri: str
) -> None:
    """HD-6: a valid URI is stored and returned byte for byte."""
    resp = await http.post(
        "/register", json={"redirect_uris": [uri], "token_endpoint_auth_method": "none"}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["redirect_uris"] == [uri]
    stored = store.get_client(resp.json()["client_id"])
    assert stored is not None
    assert stored.redirect_uris == (uri,)


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\' or not 0x20 <= ord(ch) < 0x7F:
            out.append(f"\\u{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@pytest.mark.parametrize("uri", HOSTILE)
def test_hd6_config_refuses_hostile(tmp_path: Path, uri: str) -> None:
    """HD-6: a hostile redirect URI in the TOML file is one ConfigError naming the client."""
    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://127.0.0.1:9"\n[[clients]]\nclient_id = "web"\n'
        'token_endpoint_auth_method = "none"\ngrant_types = ["authorization_code"]\n'
        f"redirect_uris = [{_toml_string(uri)}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, data_dir=tmp_path)
    assert "clients[0] (web)" in str(info.value)


def _authorize_query(client_id: str, redirect_uri: str) -> str:
    _, challenge = pkce()
    params = {
        "client_id": client_id,
        "response_type": "code",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st",
    }
    return urlencode(params) + "&redirect_uri=" + quote(redirect_uri, safe="")


@pytest.mark.anyio
@pytest.mark.parametrize("uri", HOSTILE)
async def test_hd6_authorize_refuses_hostile(
    http: httpx.AsyncClient, store: SQLGrantStore, uri: str
) -> None:
    """HD-6: at ``/authorize`` a hostile URI is an error page, never a redirect and
    never a 500, even when the very same string was stored by an older version."""
    store.put_client(
        ClientRecord(
            client_id="legacy",
            token_endpoint_auth_method="none",
            grant_types=("authorization_code",),
            redirect_uris=(REDIRECT, uri),
        )
    )
    resp = await http.get("/authorize?" + _authorize_query("legacy", uri))
    assert resp.status_code == 400
    assert "location" not in resp.headers
    assert resp.headers["content-type"].startswith("text/html")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "status"), [("none", 200), ("client_secret_basic", 400), ("private_key_jwt", 400)]
)
async def test_hd6_loopback_any_port_for_public_clients_only(
    http: httpx.AsyncClient, store: SQLGrantStore, method: str, status: int
) -> None:
    """HD-6: RFC 8252 §7.3 (any port on a loopback IP literal) is for native, public
    clients; a confidential client's loopback URI matches exactly (RFC 6749 §3.1.2.3)."""
    store.put_client(
        ClientRecord(
            client_id="loop",
            token_endpoint_auth_method=method,
            secret_hash="x" if method.startswith("client_secret") else None,
            jwks={"keys": []} if method == "private_key_jwt" else None,
            grant_types=("authorization_code",),
            redirect_uris=("http://127.0.0.1:8765/cb",),
        )
    )
    other = await http.get("/authorize?" + _authorize_query("loop", "http://127.0.0.1:9999/cb"))
    assert other.status_code == status
    assert "location" not in other.headers
    same = await http.get("/authorize?" + _authorize_query("loop", "http://127.0.0.1:8765/cb"))
    assert same.status_code == 200


@pytest.mark.parametrize("public", [True, False])
def test_hd6_allowed_only_with_loopback_flag(public: bool) -> None:
    """HD-6: :func:`redirect_uri_allowed` ignores the loopback port only when asked."""
    allowed = redirect_uri_allowed(
        ("http://127.0.0.1/cb",), "http://127.0.0.1:5000/cb", loopback_any_port=public
    )
    assert allowed is public
