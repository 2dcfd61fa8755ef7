"""Pure ASGI middleware protecting an app with DPoP (RFC 9449 §7).

No DPoP logic here: the middleware builds a :class:`~dpopkit.RequestView`
(URL from configuration), asks the :class:`~dpopkit.resource.guard.AsyncResourceGuard`,
puts the principal in ``scope["dpop"]`` and copies answers out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from typing import Any

from dpopkit.core.http import ResponseView
from dpopkit.errors import DPoPError
from dpopkit.resource._site import ProtectedResourceMetadata, ProxyTrust, Site, check_guard
from dpopkit.resource.guard import AsyncResourceGuard

__all__ = ["DPoPMiddleware", "ProtectedResourceMetadata", "ProxyTrust"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
OnError = Callable[[DPoPError, ResponseView], ResponseView]


async def _send_view(send: Send, view: ResponseView, *, head: bool = False) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in view.headers]
    headers.append((b"content-length", str(len(view.body)).encode()))
    await send({"type": "http.response.start", "status": view.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else view.body})


class DPoPMiddleware:
    """Authenticate every HTTP request before the wrapped ASGI app sees it.

    Args:
        app: the ASGI application.
        guard: the :class:`~dpopkit.resource.guard.AsyncResourceGuard`.
        public_origin: ``scheme://host[:port][/prefix]`` clients use; the ``htu`` is
            this plus ``root_path`` plus the path.
        trusted_proxies: a :class:`ProxyTrust` for ``Forwarded`` / ``X-Forwarded-*``.
        trust_host_header: take the origin from ``Host`` (emits ``SecurityWarning``).
        exclude_paths: app paths that skip authentication (``"/health"``, ``"/public/*"``).
        route_scopes: scopes per path pattern (same syntax), on top of the guard's.
        metadata: serve RFC 9728 metadata at ``/.well-known/oauth-protected-resource``.
        on_error: ``(error, response) -> response`` to change a rejection's rendering.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: AsyncResourceGuard,
        public_origin: str | None = None,
        trusted_proxies: ProxyTrust | None = None,
        trust_host_header: bool = False,
        exclude_paths: Collection[str] = (),
        route_scopes: Mapping[str, Collection[str]] | None = None,
        metadata: ProtectedResourceMetadata | None = None,
        on_error: OnError | None = None,
    ) -> None:
        check_guard(guard, AsyncResourceGuard, "DPoPMiddleware")
        self.app = app
        self.guard = guard
        self.on_error = on_error
        self.site = Site(
            public_origin=public_origin,
            trusted_proxies=trusted_proxies,
            trust_host_header=trust_host_header,
            exclude_paths=exclude_paths,
            route_scopes=route_scopes,
            metadata=metadata,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        site = self.site
        required: frozenset[str] | None = None
        if site.routes_matter:
            route = Site.asgi_route(scope)
            method: str = scope["method"]
            if site.is_metadata(method, route):
                assert site.metadata is not None
                view = site.metadata.render(
                    algs=self.guard.policy.algs_param.split(),
                    bound_required=not self.guard.accept_bearer,
                )
                await _send_view(send, view, head=method == "HEAD")
                return
            if site.excluded(route):
                await self.app(scope, receive, send)
                return
            required = site.scopes_for(route)
        try:
            principal = await self.guard.authenticate(
                site.asgi_view(scope), required_scopes=required
            )
        except DPoPError as error:
            view = self.guard.error_response(error)
            if self.on_error is not None:
                view = self.on_error(error, view)
            await _send_view(send, view)
            return
        scope = {**scope, "dpop": principal}
        if principal.dpop_nonce is None:  # no headers to add (see response_headers)
            await self.app(scope, receive, send)
            return
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in principal.response_headers
        ]
        names = {name for name, _ in extra}

        async def send_with_nonce(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", ()) if h[0].lower() not in names]
                message = {**message, "headers": [*kept, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_nonce)
