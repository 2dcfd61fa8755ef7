"""Access-token validation for the resource server, behind one small protocol.

A validator turns the presented access token into a :class:`TokenInfo` (claims,
the ``cnf.jkt`` the token is bound to or None, scopes, ``sub``, ``client_id``,
``exp``) or raises :class:`~dpopkit.errors.InvalidTokenError`. When the key
source or the introspection endpoint cannot be reached it raises
:class:`~dpopkit.errors.TemporarilyUnavailableError` (503, fail closed).

* :class:`JWTAccessTokens` / :class:`AsyncJWTAccessTokens`: RFC 9068 JWT access
  tokens verified with our strict JWS layer; keys from a static JWKS or from the
  ``jwks_uri`` found by RFC 8414 / OpenID Connect discovery, cached, refreshed on
  an unknown ``kid`` at most once per ``min_refresh_interval``.
* :class:`IntrospectionTokens` / :class:`AsyncIntrospectionTokens`: RFC 7662 with
  ``client_secret_basic``, results cached until ``min(exp, now + cache_ttl)``.
* Any callable ``(token) -> TokenInfo`` through :class:`CallableTokens`.

Both families require an ``audience`` (``insecure_skip_audience_check=True`` is the
loud opt-out), and every document they fetch (discovery, JWKS, introspection) is
streamed and abandoned past 512 KiB, by one helper for all three.

The guard decides what the binding means (RFC 9449 §7.1, §7.2); validators only
report it (checklist RS-1).

The names are defined in :mod:`~dpopkit.resource.validation` (the protocols and
:class:`TokenInfo`), :mod:`~dpopkit.resource.jwt_tokens` and
:mod:`~dpopkit.resource.introspection`, and importable from here.
"""

from __future__ import annotations

from dpopkit.resource.introspection import AsyncIntrospectionTokens, IntrospectionTokens
from dpopkit.resource.jwt_tokens import (
    RFC9068_REQUIRED_CLAIMS,
    AsyncJWTAccessTokens,
    JWTAccessTokens,
)
from dpopkit.resource.validation import (
    AsyncTokenValidator,
    CallableTokens,
    TokenInfo,
    TokenValidator,
)

__all__ = [
    "RFC9068_REQUIRED_CLAIMS",
    "AsyncIntrospectionTokens",
    "AsyncJWTAccessTokens",
    "AsyncTokenValidator",
    "CallableTokens",
    "IntrospectionTokens",
    "JWTAccessTokens",
    "TokenInfo",
    "TokenValidator",
]
