"""Loopback redirect URIs for native apps (RFC 8252 §7.3, §8.3).

A client that registered ``http://127.0.0.1/<path>`` or ``http://[::1]/<path>``
(with or without a port) may use any port at ``/authorize``; everything else
still matches exactly, never for ``localhost``, other hosts or https. The token
endpoint compares ``redirect_uri`` with the one of the authorization request
(RFC 6749 §4.1.3), port included. ``TokenClient.login_native`` then works end to
end against our AS under uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from dpopkit import DPoPKey, RequestView
from dpopkit.cli.serve import whoami_mounts
from dpopkit.client.httpx import DPoPAuth
from dpopkit.client.tokens import TokenClient
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers, redirect_uri_allowed
from dpopkit.server.config import build_server, load_config
from dpopkit.storage.sql import ClientRecord, SQLGrantStore
from tests.live import serve_in_thread

from .conftest import (
    ALICE_PASSWORD,
    AS,
    ISSUER,
    PAR_URL,
    USERS,
    body_of,
    drive_login,
    error_of,
    form_request,
    hidden_fields,
    pkce,
)

REGISTERED = "http://127.0.0.1:8765/callback"


@pytest.mark.parametrize(
    ("registered", "candidate"),
    [
        (REGISTERED, REGISTERED),
        (REGISTERED, "http://127.0.0.1:50123/callback"),
        (REGISTERED, "http://127.0.0.1/callback"),
        (REGISTERED, "http://127.0.0.1:1/callback"),
        ("http://127.0.0.1/callback", "http://127.0.0.1:65535/callback"),
        ("http://[::1]/cb", "http://[::1]:40000/cb"),
        ("http://[::1]:1234/cb?app=1", "http://[::1]:4321/cb?app=1"),
        ("http://localhost:8765/cb", "http://localhost:8765/cb"),  # exact match only
    ],
)
def test_rfc8252_loopback_any_port_allowed(registered: str, candidate: str) -> None:
    """RFC 8252 §7.3: any port on a registered loopback IP literal."""
    assert redirect_uri_allowed((registered,), candidate, loopback_any_port=True)


@pytest.mark.parametrize(
    ("registered", "candidate"),
    [
        (REGISTERED, "http://[::1]:50123/callback"),  # another loopback literal
        (REGISTERED, "http://127.0.0.2:50123/callback"),  # another loopback address
        (REGISTERED, "http://localhost:50123/callback"),  # RFC 8252 §8.3: not the name
        (REGISTERED, "https://127.0.0.1:50123/callback"),  # another scheme
        (REGISTERED, "http://127.0.0.1:50123/callback/"),  # another path
        (REGISTERED, "http://127.0.0.1:50123/Callback"),
        (REGISTERED, "http://127.0.0.1:50123/callback?x=1"),  # a query
        (REGISTERED, "http://127.0.0.1:50123/callback?"),
        (REGISTERED, "http://127.0.0.1:50123/callback#f"),  # a fragment
        (REGISTERED, "http://127.0.0.1:0/callback"),  # no such port
        (REGISTERED, "http://127.0.0.1:65536/callback"),
        (REGISTERED, "http://127.0.0.1:/callback"),
        (REGISTERED, "http://user@127.0.0.1:50123/callback"),  # user information
        (REGISTERED, "http://127.0.0.1:50123@evil.example/callback"),
        (REGISTERED, "http://127.0.0.1:50123/callback\n"),  # urlsplit would drop it
        (REGISTERED, "http://127.0.0.1:50\t123/callback"),
        (REGISTERED, "HTTP://127.0.0.1:50123/callback"),
        ("http://localhost:8765/cb", "http://localhost:9/cb"),  # never for localhost
        ("https://127.0.0.1:8765/cb", "https://127.0.0.1:9/cb"),  # never for https
        ("https://client.test/cb", "https://client.test:444/cb"),  # never for other hosts
        ("http://127.0.0.1:8765/cb?", "http://127.0.0.1:9/cb?"),
    ],
)
def test_rfc8252_loopback_everything_else_exact(registered: str, candidate: str) -> None:
    """RFC 6749 §3.1.2.3: apart from a loopback port, a simple string comparison."""
    assert not redirect_uri_allowed((registered,), candidate, loopback_any_port=True)


NATIVE = ClientRecord(
    client_id="native",
    token_endpoint_auth_method="none",
    grant_types=("authorization_code", "refresh_token"),
    redirect_uris=("http://127.0.0.1/callback", "http://[::1]:1234/cb", "http://localhost/cb"),
    scope="read",
)


@pytest.fixture
def native(as_: AS, store: SQLGrantStore) -> AS:
    store.put_client(NATIVE)
    return as_


def _authorize_url(redirect_uri: str, challenge: str) -> str:
    params = {
        "client_id": "native",
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-1",
    }
    return ISSUER + "/authorize?" + urlencode(params)


@pytest.mark.parametrize(
    "redirect_uri", ["http://127.0.0.1:50123/callback", "http://[::1]:50123/cb"]
)
def test_rfc8252_code_flow_on_another_loopback_port(native: AS, redirect_uri: str) -> None:
    """The code comes back to the port the app asked for; the token endpoint wants the
    very same URI (RFC 6749 §4.1.3) and refuses another port."""
    verifier, challenge = pkce()
    endpoint = AuthorizationEndpoint(native.service, ConfigUsers(USERS))
    final = drive_login(endpoint, _authorize_url(redirect_uri, challenge))
    assert final.status == 303
    location = final.header("Location") or ""
    assert location.startswith(redirect_uri + "?")
    code = parse_qs(urlsplit(location).query)["code"][0]
    params = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "client_id": "native",
    }
    other_port = redirect_uri.replace(":50123", ":50124")
    wrong = native.token({**params, "redirect_uri": other_port}, client=None)
    assert error_of(wrong) == "invalid_grant"
    ok = native.token({**params, "redirect_uri": redirect_uri}, client=None)
    assert ok.status == 200, ok.body
    assert body_of(ok)["token_type"] == "DPoP"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://localhost:50123/cb",  # RFC 8252 §8.3
        "http://127.0.0.1:50123/other",
        "http://evil.example:1234/cb",
        "https://127.0.0.1:50123/callback",
    ],
)
def test_rfc8252_unregistered_redirect_never_redirected(native: AS, redirect_uri: str) -> None:
    """No open redirect: an error page, never a Location (RFC 6749 §4.1.2.1)."""
    _, challenge = pkce()
    endpoint = AuthorizationEndpoint(native.service, ConfigUsers(USERS))
    page = endpoint.handle(RequestView(method="GET", url=_authorize_url(redirect_uri, challenge)))
    assert page.status == 400
    assert page.header("Location") is None


def test_rfc8252_par_accepts_loopback_port(native: AS) -> None:
    """RFC 9126 §2.1: the pushed request is validated with the same rule."""
    _, challenge = pkce()
    params = {
        "client_id": "native",
        "response_type": "code",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    ok = native.service.handle_par(
        form_request(PAR_URL, {**params, "redirect_uri": "http://127.0.0.1:50123/callback"})
    )
    assert ok.status == 201, ok.body
    bad = native.service.handle_par(
        form_request(PAR_URL, {**params, "redirect_uri": "http://localhost:50123/cb"})
    )
    assert error_of(bad) == "invalid_request"


CONFIG = """
issuer = "{issuer}"
replay_url = "memory"

[[users]]
username = "alice"
password = "{password}"

[[clients]]
client_id = "native-app"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["http://127.0.0.1/callback"]
scope = "read"
dpop_bound_access_tokens = true
"""


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[str]:
    def build(base: str) -> Any:
        path = tmp_path / "as.toml"
        path.write_text(CONFIG.format(issuer=base, password=ALICE_PASSWORD))
        config = load_config(path, data_dir=tmp_path)
        app, service = build_server(config, mounts=lambda svc: whoami_mounts(svc, base))
        services.append(service)
        return app

    services: list[Any] = []
    with serve_in_thread(build) as base:
        yield base
    for service in services:
        service.close()


def test_rfc8252_login_native_against_our_as(issuer: str) -> None:
    """``TokenClient.login_native`` (one-shot listener on a random port) against our AS under
    uvicorn: PAR, the login and consent forms over HTTP, the loopback callback, the code
    redeemed with a proof by a fresh key (C-19), the token used at /api/whoami."""
    visited: list[str] = []

    def browser(url: str) -> bool:
        visited.append(url)
        with httpx.Client(follow_redirects=False, timeout=10) as b:
            page = b.get(url)  # the login page; its cookie stays in the client
            assert page.status_code == 200, page.text
            login = b.post(
                issuer + "/authorize",
                data={
                    **hidden_fields(page.text),
                    "username": "alice",
                    "password": ALICE_PASSWORD,
                    "action": "login",
                },
            )
            assert login.status_code == 200, login.text
            approve = b.post(
                issuer + "/authorize", data={**hidden_fields(login.text), "action": "approve"}
            )
            assert approve.status_code == 303
            location = approve.headers["Location"]
            visited.append(location)
            callback = b.get(location)  # the app's loopback listener
            assert callback.status_code == 200
        return True

    key = DPoPKey.generate("ES256")
    client = TokenClient.from_issuer(
        issuer, key=key, client_id="native-app", allow_insecure_http=True
    )
    tokens = client.login_native(scope="read", open_browser=browser, timeout=20)
    assert tokens.is_dpop
    assert tokens.key.jkt != key.jkt  # C-19: a fresh key for this authorization
    assert tokens.refresh_token is not None
    authorize_url, callback_url = visited
    assert "request_uri=" in authorize_url  # the AS offers PAR, the client used it
    callback = urlsplit(callback_url)
    assert callback.hostname == "127.0.0.1"
    assert callback.port not in (None, 80)  # the listener's random port, not registered
    assert callback.path == "/callback"
    auth = DPoPAuth(tokens.key, token=tokens.access_token, allow_insecure_http=True)
    with httpx.Client(auth=auth) as http:
        resp = http.get(issuer + "/api/whoami")
    assert resp.status_code == 200, resp.text
    assert resp.json()["sub"] == "alice"
    assert resp.json()["jkt"] == tokens.key.jkt
