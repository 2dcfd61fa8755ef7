"""FastAPI: a security dependency returning the :class:`~dpopkit.resource.guard.DPoPPrincipal`.

``Security(auth, scopes=[...])`` (or ``Depends(auth)``) authenticates the request
with the async guard; the scheme appears in the OpenAPI document as an HTTP
``DPoP`` security scheme. No DPoP logic here.

A refusal is the guard's own response, byte for byte the one the ASGI middleware
sends: status, JSON ``{"error", "error_description"}``, ``WWW-Authenticate``,
``DPoP-Nonce``, ``Cache-Control: no-store``. FastAPI renders an ``HTTPException``
as ``{"detail": ...}``, so the dependency raises :class:`DPoPRefusal` (an
``HTTPException``) and :func:`dpop_refusal_handler` renders it verbatim.
:func:`install_error_handler` registers that handler; ``DPoPSecurity`` also
installs it on the first request it sees when the app has none.
"""

from __future__ import annotations

import json
from typing import Any

from dpopkit.core.http import ResponseView
from dpopkit.errors import DPoPError, requires_extra
from dpopkit.resource._site import ProxyTrust, Site, check_guard
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal

with requires_extra("fastapi", needed_by=__name__):
    from fastapi import FastAPI, HTTPException, Request, Response
    from fastapi.openapi.models import HTTPBase
    from fastapi.security import SecurityScopes
    from fastapi.security.base import SecurityBase

__all__ = ["DPoPRefusal", "DPoPSecurity", "dpop_refusal_handler", "install_error_handler"]


class DPoPRefusal(HTTPException):
    """A refused request, carrying the guard's response (RFC 6750 §3, RFC 9449 §7.1).

    An ``HTTPException``, so without :func:`dpop_refusal_handler` FastAPI still answers
    with the status and headers (the body then wrapped in ``{"detail": ...}``).

    Attributes:
        view: the guard's :class:`~dpopkit.core.http.ResponseView`.
    """

    def __init__(self, view: ResponseView) -> None:
        body: Any = json.loads(view.body) if view.body else None
        headers = {k: v for k, v in view.headers if k.lower() != "content-type"}
        super().__init__(view.status, detail=body, headers=headers)
        self.view = view


async def dpop_refusal_handler(request: Request, exc: Exception) -> Response:
    """Send a :class:`DPoPRefusal` as the guard made it (the middleware's exact answer)."""
    if not isinstance(exc, DPoPRefusal):  # registered for DPoPRefusal only
        raise exc
    view = exc.view
    return Response(content=view.body, status_code=view.status, headers=dict(view.headers))


def install_error_handler(app: FastAPI) -> None:
    """Register :func:`dpop_refusal_handler` for :class:`DPoPRefusal` on ``app``."""
    app.add_exception_handler(DPoPRefusal, dpop_refusal_handler)


def _ensure_handler(request: Request) -> None:
    """Install the handler on first use: in the app, and in the running handler table.

    Starlette copies ``app.exception_handlers`` into its exception middleware when it
    builds the stack (first request) and passes that table in the scope; adding to
    both covers this request and any later rebuild.
    """
    app = request.scope.get("app")
    if isinstance(app, FastAPI) and DPoPRefusal not in app.exception_handlers:
        install_error_handler(app)
    live = request.scope.get("starlette.exception_handlers")
    if live and isinstance(live[0], dict) and DPoPRefusal not in live[0]:
        live[0][DPoPRefusal] = dpop_refusal_handler


class DPoPSecurity(SecurityBase):
    """A FastAPI security dependency for DPoP-protected routes (RFC 9449 §7).

    Args:
        guard: the :class:`~dpopkit.resource.guard.AsyncResourceGuard`.
        public_origin: the origin clients use (``htu`` = origin + root_path + path).
        trusted_proxies: a :class:`~dpopkit.resource.ProxyTrust` for forwarding headers.
        trust_host_header: take the origin from ``Host`` (emits ``SecurityWarning``).
        scheme_name: the security scheme's name in OpenAPI.
        description: its description in OpenAPI.
    """

    def __init__(
        self,
        guard: AsyncResourceGuard,
        *,
        public_origin: str | None = None,
        trusted_proxies: ProxyTrust | None = None,
        trust_host_header: bool = False,
        scheme_name: str = "DPoP",
        description: str | None = "DPoP-bound access token (RFC 9449)",
    ) -> None:
        check_guard(guard, AsyncResourceGuard, "DPoPSecurity")
        self.model = HTTPBase(scheme="DPoP", description=description)
        self.scheme_name = scheme_name
        self.guard = guard
        self.site = Site(
            public_origin=public_origin,
            trusted_proxies=trusted_proxies,
            trust_host_header=trust_host_header,
        )

    async def __call__(
        self, request: Request, response: Response, security_scopes: SecurityScopes
    ) -> DPoPPrincipal:
        """Authenticate the request; raise :class:`DPoPRefusal` (the RS challenge) on failure."""
        try:
            principal = await self.guard.authenticate(
                self.site.asgi_view(request.scope), required_scopes=security_scopes.scopes
            )
        except DPoPError as error:
            _ensure_handler(request)
            raise DPoPRefusal(self.guard.error_response(error)) from None
        for name, value in principal.response_headers:
            response.headers[name] = value
        return principal
