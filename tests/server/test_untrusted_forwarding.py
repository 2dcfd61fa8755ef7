"""A proxy's X-Forwarded-For that nobody configured is not believed, and the AS says so once.

The login throttle and the registration limit count by client address (HD-2, HD-3). Unless
``FORWARDED_ALLOW_IPS`` names the proxy, that address is the TCP peer: behind a proxy every
client shares one budget. The first request to ``/authorize`` or ``/register`` that carries
``X-Forwarded-For`` logs one warning (reason ``untrusted_forwarding``), once per process.
"""

from __future__ import annotations

import logging

import httpx
import pytest

import dpopkit.server.app as app_module
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.storage.sql import SQLGrantStore

from .conftest import ISSUER, USERS, Clock, make_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "reason", None) == "untrusted_forwarding"]


@pytest.mark.parametrize("configured", [False, True])
async def test_untrusted_forwarding_is_logged_once(
    configured: bool,
    store: SQLGrantStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HD-3: one warning for the first forwarded sign-in request, none for later ones,
    none for endpoints that do not count by address, none when proxies are configured."""
    monkeypatch.setattr(app_module, "_forwarding_warned", False)
    if configured:
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.7")
    else:
        monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    caplog.set_level(logging.INFO, logger="dpopkit")
    app = create_app(make_service(store, Clock(1_700_000_000.0)), authenticator=ConfigUsers(USERS))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        await client.get("/jwks", headers=forwarded)
        assert _warnings(caplog) == []
        for _ in range(3):
            await client.get("/authorize", headers=forwarded)
    found = _warnings(caplog)
    assert len(found) == (0 if configured else 1)
    assert all(r.levelno == logging.WARNING for r in found)
