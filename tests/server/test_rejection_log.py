"""HD-25: every refusal of the authorization server logs one line with its reason code.

The line (``dpopkit.server``, INFO) names the endpoint, the method, the status, the
``error`` sent and the reason code, and nothing the client sent: never a secret, a
token, a proof or a parameter value. One table of refusals, one per endpoint and kind.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest

from dpopkit import DPoPKey, create_proof
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.storage.sql import SQLGrantStore

from .conftest import ISSUER, SECRET, TOKEN_URL, USERS, Clock, basic, make_service

pytestmark = pytest.mark.anyio

#: A string of ours in every request: it must never reach a log line.
CANARY = "canary-Zq7v"


def _proof(url: str, clock: Clock) -> str:
    key = DPoPKey.generate("ES256")
    return create_proof(key, htm="POST", htu=url, now=clock.now, allow_insecure_http=True)


#: name -> (method, path, request kwargs builder, expected status, expected reason)
CASES: dict[str, tuple[str, str, Any, int, str]] = {
    "token-no-client": (
        "POST",
        "/token",
        lambda c: {"data": {"grant_type": "client_credentials", "scope": CANARY}},
        401,
        "invalid_client",
    ),
    "token-wrong-secret": (
        "POST",
        "/token",
        lambda c: {
            "data": {"grant_type": "client_credentials"},
            "headers": {"Authorization": basic("conf", CANARY), "DPoP": _proof(TOKEN_URL, c)},
        },
        401,
        "invalid_client",
    ),
    "token-bad-proof": (
        "POST",
        "/token",
        lambda c: {
            "data": {"grant_type": "client_credentials"},
            "headers": {"Authorization": basic("conf", SECRET), "DPoP": CANARY},
        },
        400,
        "malformed",
    ),
    "token-unknown-grant": (
        "POST",
        "/token",
        lambda c: {
            "data": {"grant_type": CANARY},
            "headers": {"Authorization": basic("conf", SECRET)},
        },
        400,
        "unsupported_grant_type",
    ),
    "token-get": ("GET", "/token", lambda c: {"params": {"x": CANARY}}, 405, "invalid_request"),
    "token-too-large": (
        "POST",
        "/token",
        lambda c: {"content": CANARY.encode() * 10000},
        413,
        "too_large",
    ),
    "par-no-client": ("POST", "/par", lambda c: {"data": {"state": CANARY}}, 401, "invalid_client"),
    "introspect-no-client": (
        "POST",
        "/introspect",
        lambda c: {"data": {"token": CANARY}},
        401,
        "invalid_client",
    ),
    "revoke-no-client": (
        "POST",
        "/revoke",
        lambda c: {"data": {"token": CANARY}},
        401,
        "invalid_client",
    ),
    "authorize-unknown-client": (
        "GET",
        "/authorize",
        lambda c: {"params": {"client_id": CANARY, "response_type": "code"}},
        400,
        "invalid_client",
    ),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hd25_every_refusal_is_one_line_with_its_reason(
    case: str, store: SQLGrantStore, caplog: pytest.LogCaptureFixture
) -> None:
    """HD-25: one ``as rejected`` line per refusal, with the reason, and nothing sent."""
    method, path, build, status, reason = CASES[case]
    clock = Clock(time.time())
    app = create_app(make_service(store, clock), authenticator=ConfigUsers(USERS))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    caplog.set_level(logging.INFO, logger="dpopkit")
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        response = await client.request(method, path, **build(clock))
    assert response.status_code == status
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 1, lines
    fields = dict(part.split("=", 1) for part in lines[0].split()[2:])
    assert fields["endpoint"] == path
    assert fields["status"] == str(status)
    assert fields["reason"] == reason
    every = "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY not in every
    assert SECRET not in every
