"""FastAPI: a security dependency returning the :class:`~dpopkit.resource.guard.DPoPPrincipal`.

``Security(auth, scopes=[...])`` (or ``Depends(auth)``) authenticates the request
with the async guard; the scheme appears in the OpenAPI document as an HTTP
``DPoP`` security scheme. No DPoP logic here.
"""

from __future__ import annotations

import json
from typing import Any

from dpopkit.errors import DPoPError, requires_extra
from dpopkit.resource._site import ProxyTrust, Site, check_guard
from dpopkit.resource.guard import AsyncResourceGuard, DPoPPrincipal

with requires_extra("fastapi", needed_by=__name__):
    from fastapi import HTTPException, Request, Response
    from fastapi.openapi.models import HTTPBase
    from fastapi.security import SecurityScopes
    from fastapi.security.base import SecurityBase

__all__ = ["DPoPSecurity"]


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
        """Authenticate the request; raise ``HTTPException`` with the RS challenge on failure."""
        try:
            principal = await self.guard.authenticate(
                self.site.asgi_view(request.scope), required_scopes=security_scopes.scopes
            )
        except DPoPError as error:
            view = self.guard.error_response(error)
            body: Any = json.loads(view.body) if view.body else None
            headers = {k: v for k, v in view.headers if k.lower() != "content-type"}
            raise HTTPException(view.status, detail=body, headers=headers) from None
        for name, value in principal.response_headers:
            response.headers[name] = value
        return principal
