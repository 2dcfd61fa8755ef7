"""Fixtures for the resource-server tests: one harness per adapter and event loop."""

from __future__ import annotations

from typing import Any

import pytest

from dpopkit import DPoPKey
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    ORIGIN,
    RS,
    Build,
    Calls,
    Clock,
    Issuer,
    asgi_app,
    asgi_requester,
    wsgi_app,
    wsgi_requester,
)

GUARD_OPTIONS = {"policy", "nonces", "accept_bearer", "required_scopes", "realm", "metrics"}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run ``@pytest.mark.anyio`` tests on both asyncio and trio."""
    backend: str = request.param
    return backend


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


@pytest.fixture(params=["asgi-asyncio", "asgi-trio", "wsgi"])
def build(request: pytest.FixtureRequest, clock: Clock, issuer: Issuer) -> Build:
    """Build the protected app behind the adapter named by the parameter."""
    kind: str = request.param

    def make(*, tokens: Any = None, base_url: str = ORIGIN, **options: Any) -> RS:
        guard_opts = {k: v for k, v in options.items() if k in GUARD_OPTIONS}
        mw_opts = {k: v for k, v in options.items() if k not in GUARD_OPTIONS}
        mw_opts.setdefault("public_origin", ORIGIN)
        if mw_opts["public_origin"] is None:
            del mw_opts["public_origin"]
        validator = tokens or JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
        calls = Calls()
        if kind.startswith("asgi"):
            aguard = AsyncResourceGuard(
                tokens=validator,
                replay=AsyncMemoryReplayCache(),
                clock=clock,
                **guard_opts,
            )
            app = DPoPMiddleware(asgi_app(calls), guard=aguard, **mw_opts)
            backend = kind.removeprefix("asgi-")
            return RS(asgi_requester(app, backend, base_url), calls, aguard, kind)
        sguard = ResourceGuard(
            tokens=validator, replay=MemoryReplayCache(), clock=clock, **guard_opts
        )
        wapp = DPoPWSGIMiddleware(wsgi_app(calls), guard=sguard, **mw_opts)
        return RS(wsgi_requester(wapp, base_url), calls, sguard, kind)

    return make
