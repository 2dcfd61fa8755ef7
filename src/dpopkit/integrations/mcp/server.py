"""Protect an MCP Streamable HTTP server (official ``mcp`` SDK, 2.x) with DPoP.

A thin layer over :class:`~dpopkit.resource.asgi.DPoPMiddleware`: every RFC 9449
§4.3 check, the ``cnf.jkt`` binding, the replay record and the nonces come from the
:class:`~dpopkit.resource.guard.AsyncResourceGuard` you pass, against the endpoint's
public URL (POST and the GET/SSE stream alike). This module adds what MCP needs
on top:

* the RFC 9728 document at ``/.well-known/oauth-protected-resource<path>``, with
  ``dpop_signing_alg_values_supported`` and ``dpop_bound_access_tokens_required``;
* ``resource_metadata="<that URL>"`` on every ``WWW-Authenticate`` challenge (MCP
  authorization, RFC 9728 §5.1);
* the verified principal handed to tool handlers the way the SDK exposes auth
  context: ``mcp.server.auth.middleware.auth_context.get_access_token()`` (an
  ``AccessToken`` whose ``claims`` carry ``cnf.jkt``), ``scope["user"]`` for the
  SDK's session-ownership checks, and :func:`current_principal` for the full
  :class:`~dpopkit.resource.guard.DPoPPrincipal`.

Example::

    app = protect(
        server.streamable_http_app(),
        guard=AsyncResourceGuard(tokens=..., replay=...),
        resource="https://mcp.example.com/mcp",
        authorization_servers=["https://as.example.com"],
    )
"""

from __future__ import annotations

import contextvars
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from dpopkit.core.challenge import build_challenge, parse_challenges
from dpopkit.core.http import ResponseView
from dpopkit.core.proof import ProofPolicy
from dpopkit.errors import DPoPError, requires_extra
from dpopkit.resource._site import ProtectedResourceMetadata, ProxyTrust
from dpopkit.resource.asgi import ASGIApp, DPoPMiddleware, Receive, Scope, Send
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal

with requires_extra("mcp", needed_by=__name__):
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken
    from starlette.authentication import AuthCredentials

__all__ = [
    "STATELESS_IAT_WINDOW",
    "MCPResourceAuth",
    "access_token_of",
    "current_principal",
    "protect",
    "stateless_proof_policy",
]

#: SEP-1932 (DPoP profile for MCP): a server that keeps no per-client state accepts a
#: proof whose ``iat`` lies within this many seconds of its clock, either way.
STATELESS_IAT_WINDOW = 300.0

_principal: contextvars.ContextVar[DPoPPrincipal | None] = contextvars.ContextVar(
    "dpopkit_mcp_principal", default=None
)


def stateless_proof_policy(**overrides: Any) -> ProofPolicy:
    """The SEP-1932 preset: ``iat`` within ±:data:`STATELESS_IAT_WINDOW` seconds.

    For servers without nonces; the replay store still records every proof for as
    long as it could be accepted (RFC 9449 §11.1).

    Args:
        **overrides: other :class:`~dpopkit.ProofPolicy` fields (e.g. ``algorithms``).
    """
    window = {"max_age": STATELESS_IAT_WINDOW, "future_skew": STATELESS_IAT_WINDOW}
    return ProofPolicy(**{**window, **overrides})


def current_principal() -> DPoPPrincipal | None:
    """The principal of the MCP request being handled (inside a tool handler), or None."""
    return _principal.get()


def access_token_of(principal: DPoPPrincipal, token: str) -> AccessToken:
    """The SDK's ``AccessToken`` for a verified principal.

    ``client_id`` is the token's ``client_id`` claim (empty when it has none),
    ``subject`` its ``sub``, ``resource`` its audience, ``claims`` every claim (with
    ``cnf.jkt``, RFC 9449 §6).
    """
    claims = dict(principal.claims)
    exp = claims.get("exp")
    aud = claims.get("aud")
    resource = aud if isinstance(aud, str) else None
    if isinstance(aud, list) and len(aud) == 1 and isinstance(aud[0], str):
        resource = aud[0]
    return AccessToken(
        token=token,
        client_id=principal.client_id or "",
        scopes=sorted(principal.scopes),
        expires_at=int(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None,
        resource=resource,
        subject=principal.sub,
        claims=claims,
    )


def _token_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            return str(value.decode("latin-1").strip().partition(" ")[2].strip())
    return ""


class _SDKAuthContext:
    """Hand the principal the guard verified to the SDK (``scope["user"]``, contextvar)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("dpop") if scope["type"] == "http" else None
        if not isinstance(principal, DPoPPrincipal):
            await self.app(scope, receive, send)
            return
        user = AuthenticatedUser(access_token_of(principal, _token_of(scope)))
        scope = {**scope, "user": user, "auth": AuthCredentials(sorted(principal.scopes))}
        sdk_token = auth_context_var.set(user)
        own_token = _principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            _principal.reset(own_token)
            auth_context_var.reset(sdk_token)


class MCPResourceAuth:
    """ASGI middleware: DPoP in front of an MCP Streamable HTTP app.

    Args:
        app: the SDK's app (``MCPServer.streamable_http_app()`` or the low-level
            ``Server.streamable_http_app()``), built **without** the SDK's own auth.
        guard: the :class:`~dpopkit.resource.guard.AsyncResourceGuard` (token
            validator with the expected audience, replay store, policy, nonces).
        resource: the MCP endpoint's public URL (``https://mcp.example.com/mcp``);
            the RFC 9728 ``resource`` and, unless ``public_origin`` says otherwise,
            the origin every proof's ``htu`` is checked against.
        authorization_servers: issuer identifiers clients may get tokens from.
        scopes_supported: scopes listed in the RFC 9728 document.
        resource_name: a human-readable name for the RFC 9728 document.
        public_origin: ``scheme://host[:port][/prefix]`` in front of the app's paths;
            default: the scheme and authority of ``resource``.
        trusted_proxies: a :class:`~dpopkit.resource.ProxyTrust` for ``Forwarded`` /
            ``X-Forwarded-*`` (see "Behind a proxy" in the MCP guide).
        exclude_paths: app paths served without authentication.
        extra_metadata: further members of the RFC 9728 document.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: AsyncResourceGuard,
        resource: str,
        authorization_servers: Sequence[str],
        scopes_supported: Sequence[str] = (),
        resource_name: str | None = None,
        public_origin: str | None = None,
        trusted_proxies: ProxyTrust | None = None,
        exclude_paths: Collection[str] = (),
        extra_metadata: Mapping[str, object] | None = None,
    ) -> None:
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError("resource must be the absolute URL of the MCP endpoint")
        self.metadata = ProtectedResourceMetadata(
            resource=resource,
            authorization_servers=tuple(authorization_servers),
            scopes_supported=tuple(scopes_supported),
            resource_name=resource_name,
            extra=dict(extra_metadata or {}),
        )
        #: the URL of the RFC 9728 document, sent as ``resource_metadata``.
        self.metadata_url = f"{parts.scheme}://{parts.netloc}{self.metadata.path}"
        self.guard = guard
        self._inner = DPoPMiddleware(
            _SDKAuthContext(app),
            guard=guard,
            public_origin=(
                public_origin if public_origin is not None else f"{parts.scheme}://{parts.netloc}"
            ),
            trusted_proxies=trusted_proxies,
            exclude_paths=exclude_paths,
            metadata=self.metadata,
            on_error=self._with_resource_metadata,
        )

    def _with_resource_metadata(self, error: DPoPError, view: ResponseView) -> ResponseView:
        """Add ``resource_metadata`` to each challenge (MCP authorization, RFC 9728 §5.1)."""
        values = [v for k, v in view.headers if k.lower() == "www-authenticate"]
        if not values:
            return view
        challenges = [
            build_challenge(c.scheme, [*c.params.items(), ("resource_metadata", self.metadata_url)])
            for c in parse_challenges(values)
        ]
        headers = [(k, v) for k, v in view.headers if k.lower() != "www-authenticate"]
        headers.append(("WWW-Authenticate", ", ".join(challenges)))
        return ResponseView(status=view.status, headers=tuple(headers), body=view.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (lifespan passes through)."""
        await self._inner(scope, receive, send)


def protect(
    app: ASGIApp,
    *,
    guard: AsyncResourceGuard,
    resource: str,
    authorization_servers: Sequence[str],
    scopes_supported: Sequence[str] = (),
    resource_name: str | None = None,
    public_origin: str | None = None,
    trusted_proxies: ProxyTrust | None = None,
) -> MCPResourceAuth:
    """Wrap an MCP Streamable HTTP app so that every request needs a DPoP-bound token.

    Arguments as for :class:`MCPResourceAuth`.
    """
    return MCPResourceAuth(
        app,
        guard=guard,
        resource=resource,
        authorization_servers=authorization_servers,
        scopes_supported=scopes_supported,
        resource_name=resource_name,
        public_origin=public_origin,
        trusted_proxies=trusted_proxies,
    )
