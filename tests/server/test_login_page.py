"""The login page as a person meets it (HD-31): a wrong password keeps the username
(HTML-escaped), never the password; the AS answers the browser's favicon request."""

from __future__ import annotations

import html

import httpx
import pytest

from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.storage.sql import SQLGrantStore

from .conftest import ISSUER, USERS, Clock, authorize_params, hidden_fields, make_service, pkce

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("username", ["alice", 'a"><script>alert(1)</script>', "bob & 'eve'"])
async def test_hd31_wrong_password_keeps_the_username(
    store: SQLGrantStore, clock: Clock, username: str
) -> None:
    """HD-31: after a wrong password the form is shown again (200, an error) with the
    username filled in and escaped (no markup injection), and no password value."""
    app = create_app(make_service(store, clock), authenticator=ConfigUsers(USERS))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        _, challenge = pkce()
        page = await http.get("/authorize", params=authorize_params("public", challenge))
        assert page.status_code == 200
        secret = "typed-wrong-password"
        again = await http.post(
            "/authorize",
            data={
                **hidden_fields(page.text),
                "username": username,
                "password": secret,
                "action": "login",
            },
        )
    assert again.status_code == 200
    assert 'role="alert"' in again.text
    escaped = html.escape(username)
    assert f'name="username" autocomplete="username" required value="{escaped}"' in again.text
    if escaped != username:
        assert username not in again.text
    assert secret not in again.text


async def test_hd31_favicon_answered(store: SQLGrantStore, clock: Clock) -> None:
    """HD-31: ``/favicon.ico`` is an empty 204, not a 404 in every browser console."""
    app = create_app(make_service(store, clock), authenticator=ConfigUsers(USERS))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        resp = await http.get("/favicon.ico")
    assert resp.status_code == 204
    assert resp.content == b""
