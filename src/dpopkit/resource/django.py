"""Django: a middleware plus ``@dpop_required(*scopes)`` (sync guard; no DPoP logic here).

Settings::

    DPOPKIT = {"guard": ResourceGuard(...), "public_origin": "https://api.example"}
    MIDDLEWARE = [..., "dpopkit.resource.django.DPoPMiddleware"]

Views decorated with :func:`dpop_required` are authenticated; with
``"protect_all": True`` every view is, except those marked :func:`dpop_exempt`.
The principal of an accepted request is ``request.dpop``.

The decorator never depends on the middleware: when ``DPoPMiddleware`` is missing,
listed in the wrong place, or cannot see the mark (a class-based view decorated
with ``method_decorator``, a wrapper that does not copy attributes), the decorator
authenticates the request itself with the same ``DPOPKIT`` settings. When the
middleware did authenticate the request, the decorator only checks its own scopes
(one replay record per request). A view is never served unauthenticated.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from dpopkit.errors import DPoPError, InsufficientScopeError, Reason, requires_extra
from dpopkit.resource._site import Site
from dpopkit.resource.guard import DPoPPrincipal, ResourceGuard

with requires_extra("django", needed_by=__name__):
    from asgiref.sync import sync_to_async
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.http import (  # type: ignore[import-untyped]
        HttpRequest,
        HttpResponse,
        HttpResponseBase,
    )

__all__ = ["DPoPMiddleware", "dpop_exempt", "dpop_required"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class _Config:
    guard: ResourceGuard
    site: Site
    protect_all: bool


_CACHE: dict[tuple[object, ...], _Config] = {}


def _config() -> _Config:
    """The guard and site from ``settings.DPOPKIT`` (built once per distinct setting).

    Raises:
        ImproperlyConfigured: ``DPOPKIT`` is missing or its ``guard`` is not a ResourceGuard.
    """
    conf: Any = getattr(settings, "DPOPKIT", None)
    if not isinstance(conf, dict):
        raise ImproperlyConfigured(
            'settings.DPOPKIT = {"guard": ResourceGuard(...), ...} is missing'
        )
    guard = conf.get("guard")
    if not isinstance(guard, ResourceGuard):
        raise ImproperlyConfigured('DPOPKIT["guard"] must be a dpopkit ResourceGuard')
    key = (
        id(guard),
        conf.get("public_origin"),
        conf.get("trusted_proxies"),
        bool(conf.get("trust_host_header", False)),
        bool(conf.get("protect_all", False)),
    )
    found = _CACHE.get(key)
    if found is None or found.guard is not guard:
        site = Site(
            public_origin=conf.get("public_origin"),
            trusted_proxies=conf.get("trusted_proxies"),
            trust_host_header=bool(conf.get("trust_host_header", False)),
        )
        found = _Config(guard=guard, site=site, protect_all=key[-1])
        _CACHE.clear()
        _CACHE[key] = found
    return found


def _render(guard: ResourceGuard, error: DPoPError) -> HttpResponse:
    view = guard.error_response(error)
    response = HttpResponse(view.body, status=view.status)
    for name, value in view.headers:
        response[name] = value
    return response


def _authenticate(request: HttpRequest, scopes: Collection[str]) -> DPoPPrincipal | HttpResponse:
    """The principal of ``request`` for a view needing ``scopes``, or the rejection."""
    config = _config()
    principal = getattr(request, "dpop", None)
    if isinstance(principal, DPoPPrincipal):
        # The middleware authenticated this request (one replay record): check our scopes.
        needed = frozenset(scopes) | config.guard.required_scopes
        if needed <= principal.scopes:
            return principal
        error = InsufficientScopeError(
            Reason.SCOPE_MISSING,
            "the token lacks a required scope",
            scope=" ".join(sorted(needed)),
        )
        config.guard.metrics.record_reject(error.reason)
        return _render(config.guard, error)
    try:
        principal = config.guard.authenticate(
            config.site.wsgi_view(request.META), required_scopes=scopes
        )
    except DPoPError as error:
        return _render(config.guard, error)
    request.dpop = principal
    return principal


def _with_headers(response: HttpResponseBase, principal: DPoPPrincipal) -> HttpResponseBase:
    for name, value in principal.response_headers:
        response[name] = value
    return response


def dpop_required(*scopes: str) -> Callable[[F], F]:
    """Protect a view with DPoP (RFC 9449 §7), needing ``scopes``.

    Works with or without :class:`DPoPMiddleware`, on function views (sync or async)
    and, through ``django.utils.decorators.method_decorator``, on class-based views.
    """
    needed = frozenset(scopes)

    def decorator(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                outcome = await sync_to_async(_authenticate)(request, needed)
                if not isinstance(outcome, DPoPPrincipal):
                    return outcome
                return _with_headers(await view(request, *args, **kwargs), outcome)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(view)
            def sync_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                outcome = _authenticate(request, needed)
                if not isinstance(outcome, DPoPPrincipal):
                    return outcome
                return _with_headers(view(request, *args, **kwargs), outcome)

            wrapper = sync_wrapper
        wrapper.dpop_scopes = needed
        return cast(F, wrapper)

    return decorator


def dpop_exempt(view: F) -> F:
    """Mark a view as public when ``protect_all`` is on."""
    view.dpop_exempt = True  # type: ignore[attr-defined]
    return view


class DPoPMiddleware:
    """Authenticate marked views with the configured ``DPOPKIT["guard"]`` (RFC 9449 §7)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        config = _config()
        self.guard = config.guard
        self.protect_all = config.protect_all
        self.site = config.site

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Run the view; add ``DPoP-Nonce`` when the guard handed one out."""
        response = self.get_response(request)
        principal = getattr(request, "dpop", None)
        if isinstance(principal, DPoPPrincipal):
            _with_headers(response, principal)
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
            return _render(self.guard, error)
        request.dpop = principal
        return None
