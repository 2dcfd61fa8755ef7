"""View decorators that accept the DPoP scheme (RFC 9449 §7), like DOT's own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

from dpopkit.errors import DPoPError, requires_extra
from dpopkit.integrations.django_oauth_toolkit.backends import dpop_core, resource_guard

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

__all__ = ["protected_resource"]


def _rejection(error: DPoPError) -> HttpResponse:
    view = resource_guard().error_response(error)
    response = HttpResponse(content=view.body or b"", status=view.status)
    for name, value in view.headers:
        response[name] = value
    return response


def protected_resource(
    scopes: Sequence[str] = (),
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Protect a view as DOT's ``protected_resource`` does, with DPoP.

    The request carries ``request.resource_owner``, ``request.access_token`` and
    ``request.dpop`` on success; a rejection answers 401 (400, 403) with the
    ``WWW-Authenticate`` challenge of RFC 9449 §7.1 and RFC 6750 §3.

    Args:
        scopes: scopes the view needs.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            valid, result = dpop_core().verify_request(request, scopes=list(scopes))
            if not valid:
                return _rejection(result.dpop_error)
            request.resource_owner = result.user
            request.access_token = result.access_token
            request.dpop = result.dpop
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
