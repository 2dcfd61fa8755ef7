"""The resource-server role: a framework-free guard, token validators and thin adapters.

``ResourceGuard`` / ``AsyncResourceGuard`` (:mod:`.guard`) authenticate a
:class:`~dpopkit.RequestView`; :mod:`.tokens` validates access tokens from any
issuer; :mod:`.asgi` and :mod:`.wsgi` are the middleware; FastAPI, Flask and
Django adapters import their framework and are imported explicitly.
"""

from __future__ import annotations

from dpopkit.resource._site import ProtectedResourceMetadata, ProxyTrust
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal, GuardMetrics, ResourceGuard
from dpopkit.resource.tokens import (
    AsyncIntrospectionTokens,
    AsyncJWTAccessTokens,
    AsyncTokenValidator,
    CallableTokens,
    IntrospectionTokens,
    JWTAccessTokens,
    TokenInfo,
    TokenValidator,
)
from dpopkit.resource.wsgi import DPoPWSGIMiddleware

__all__ = [
    "AsyncIntrospectionTokens",
    "AsyncJWTAccessTokens",
    "AsyncResourceGuard",
    "AsyncTokenValidator",
    "CallableTokens",
    "DPoPMiddleware",
    "DPoPPrincipal",
    "DPoPWSGIMiddleware",
    "GuardMetrics",
    "IntrospectionTokens",
    "JWTAccessTokens",
    "ProtectedResourceMetadata",
    "ProxyTrust",
    "ResourceGuard",
    "TokenInfo",
    "TokenValidator",
]
