"""Django: a middleware plus ``@dpop_required(*scopes)`` (sync guard; no DPoP logic here).

Settings::

    DPOPKIT = {"guard": ResourceGuard(...), "public_origin": "https://api.example"}
    MIDDLEWARE = [..., "dpopkit.resource.django.DPoPMiddleware"]

Views decorated with :func:`dpop_required` are authenticated; with
``"protect_all": True`` every view is, except those marked :func:`dpop_exempt`.
The principal of an accepted request is ``request.dpop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dpopkit.errors import DPoPError, requires_extra
from dpopkit.resource._site import Site
from dpopkit.resource.guard import DPoPPrincipal, ResourceGuard

with requires_extra("django", needed_by=__name__):
    from django.conf import settings  # type: ignore[import-untyped]
    from django.http import (  # type: ignore[import-untyped]
        HttpRequest,
        HttpResponse,
        HttpResponseBase,
    )

__all__ = ["DPoPMiddleware", "dpop_exempt", "dpop_required"]

F = TypeVar("F", bound=Callable[..., Any])


def dpop_required(*scopes: str) -> Callable[[F], F]:
    """Mark a view as DPoP-protected, needing ``scopes``."""

    def decorator(view: F) -> F:
        view.dpop_scopes = frozenset(scopes)  # type: ignore[attr-defined]
        return view

    return decorator


def dpop_exempt(view: F) -> F:
    """Mark a view as public when ``protect_all`` is on."""
    view.dpop_exempt = True  # type: ignore[attr-defined]
    return view


class DPoPMiddleware:
    """Authenticate marked views with the configured ``DPOPKIT["guard"]`` (RFC 9449 §7)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        conf: dict[str, Any] = dict(settings.DPOPKIT)
        guard = conf["guard"]
        if not isinstance(guard, ResourceGuard):
            raise TypeError('DPOPKIT["guard"] must be a dpopkit ResourceGuard')
        self.guard = guard
        self.protect_all = bool(conf.get("protect_all", False))
        self.site = Site(
            public_origin=conf.get("public_origin"),
            trusted_proxies=conf.get("trusted_proxies"),
            trust_host_header=bool(conf.get("trust_host_header", False)),
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Run the view; add ``DPoP-Nonce`` when the guard handed one out."""
        response = self.get_response(request)
        principal = getattr(request, "dpop", None)
        if isinstance(principal, DPoPPrincipal):
            for name, value in principal.response_headers:
                response[name] = value
        return response

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponseBase | None:
        """Authenticate before a marked view runs; answer the rejection otherwise."""
        scopes = getattr(view, "dpop_scopes", None)
        if scopes is None and (not self.protect_all or getattr(view, "dpop_exempt", False)):
            return None
        try:
            principal = self.guard.authenticate(
                self.site.wsgi_view(request.META), required_scopes=scopes or ()
            )
        except DPoPError as error:
            view_resp = self.guard.error_response(error)
            response = HttpResponse(view_resp.body, status=view_resp.status)
            for name, value in view_resp.headers:
                response[name] = value
            return response
        request.dpop = principal
        return None
