"""Flask: an extension with a ``required(*scopes)`` decorator (sync guard; no DPoP logic here).

The principal of an accepted request is ``flask.g.dpop``. The decorator is
self-contained: it authenticates, runs the view (sync or async, through
``app.ensure_sync``) and adds a fresh ``DPoP-Nonce`` to the view's response
itself, so nothing depends on ``init_app`` having run or on hook order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from dpopkit.core.http import ResponseView
from dpopkit.errors import DPoPError, requires_extra
from dpopkit.resource._site import ProxyTrust, Site, check_guard
from dpopkit.resource.guard import DPoPPrincipal, ResourceGuard

with requires_extra("flask", needed_by=__name__):
    from flask import Flask, Response, current_app, g, make_response, request

__all__ = ["DPoP", "current_principal"]

F = TypeVar("F", bound=Callable[..., Any])


def _response(view: ResponseView) -> Response:
    return Response(view.body, status=view.status, headers=list(view.headers))


def current_principal() -> DPoPPrincipal:
    """The principal of the current (accepted) request."""
    return cast(DPoPPrincipal, g.dpop)


class DPoP:
    """The Flask extension (RFC 9449 §7).

    Args:
        app: the Flask app (or call :meth:`init_app` later).
        guard: the :class:`~dpopkit.resource.guard.ResourceGuard`.
        public_origin: the origin clients use (``htu`` = origin + SCRIPT_NAME + path).
        trusted_proxies: a :class:`~dpopkit.resource.ProxyTrust` for forwarding headers.
        trust_host_header: take the origin from ``Host`` (emits ``SecurityWarning``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        guard: ResourceGuard,
        public_origin: str | None = None,
        trusted_proxies: ProxyTrust | None = None,
        trust_host_header: bool = False,
    ) -> None:
        # An AsyncResourceGuard here would hand back a coroutine (truthy) for every
        # request, and the view would run unauthenticated: refuse the wiring.
        check_guard(guard, ResourceGuard, "the Flask DPoP extension")
        self.guard = guard
        self.site = Site(
            public_origin=public_origin,
            trusted_proxies=trusted_proxies,
            trust_host_header=trust_host_header,
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension (``app.extensions["dpopkit"]``); the decorator needs no hook."""
        app.extensions["dpopkit"] = self

    def required(self, *scopes: str) -> Callable[[F], F]:
        """Decorate a view: authenticate with DPoP and require ``scopes``."""

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    principal = self.guard.authenticate(
                        self.site.wsgi_view(request.environ), required_scopes=scopes
                    )
                except DPoPError as error:
                    return _response(self.guard.error_response(error))
                g.dpop = principal
                response = make_response(current_app.ensure_sync(view)(*args, **kwargs))
                for name, value in principal.response_headers:
                    response.headers[name] = value
                return response

            return cast(F, wrapper)

        return decorator
