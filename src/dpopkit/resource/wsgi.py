"""WSGI middleware protecting an app with DPoP (RFC 9449 §7).

The mirror of :mod:`dpopkit.resource.asgi` over the synchronous guard. The
principal goes to ``environ["dpopkit.principal"]``. WSGI servers fold repeated
header fields into one comma-joined value; the guard counts a comma in
``DPoP`` or ``Authorization`` as two fields (RFC 9449 §4.3 (1), V-1).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dpopkit.core.http import ResponseView
from dpopkit.errors import DPoPError
from dpopkit.resource._site import (
    ProtectedResourceMetadata,
    ProxyTrust,
    Site,
    check_guard,
    reason_phrase,
)
from dpopkit.resource.guard import ResourceGuard

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PRINCIPAL_KEY", "DPoPWSGIMiddleware", "ProtectedResourceMetadata", "ProxyTrust"]

#: Where the principal goes in the WSGI environ.
PRINCIPAL_KEY = "dpopkit.principal"
OnError = Callable[[DPoPError, ResponseView], ResponseView]


def _respond(start_response: StartResponse, view: ResponseView, head: bool) -> list[bytes]:
    headers = [*view.headers, ("Content-Length", str(len(view.body)))]
    start_response(f"{view.status} {reason_phrase(view.status)}", headers)
    return [b"" if head else view.body]


class DPoPWSGIMiddleware:
    """Authenticate every request before the wrapped WSGI app sees it.

    Arguments as for :class:`~dpopkit.resource.asgi.DPoPMiddleware`, with a
    :class:`~dpopkit.resource.guard.ResourceGuard`; the ``htu`` is
    ``public_origin`` + ``SCRIPT_NAME`` + ``PATH_INFO``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        guard: ResourceGuard,
        public_origin: str | None = None,
        trusted_proxies: ProxyTrust | None = None,
        trust_host_header: bool = False,
        exclude_paths: Collection[str] = (),
        route_scopes: Mapping[str, Collection[str]] | None = None,
        metadata: ProtectedResourceMetadata | None = None,
        on_error: OnError | None = None,
    ) -> None:
        check_guard(guard, ResourceGuard, "DPoPWSGIMiddleware")
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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one WSGI request."""
        site = self.site
        method = str(environ.get("REQUEST_METHOD", "GET"))
        route = Site.wsgi_route(environ)
        if site.is_metadata(method, route):
            assert site.metadata is not None
            view = site.metadata.render(
                algs=self.guard.policy.algs_param.split(),
                bound_required=not self.guard.accept_bearer,
            )
            return _respond(start_response, view, method == "HEAD")
        if site.excluded(route):
            return self.app(environ, start_response)
        try:
            principal = self.guard.authenticate(
                site.wsgi_view(environ), required_scopes=site.scopes_for(route)
            )
        except DPoPError as error:
            view = self.guard.error_response(error)
            if self.on_error is not None:
                view = self.on_error(error, view)
            return _respond(start_response, view, False)
        environ[PRINCIPAL_KEY] = principal
        extra = list(principal.response_headers)
        if not extra:
            return self.app(environ, start_response)
        names = {name.lower() for name, _ in extra}

        def start_with_nonce(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            kept = [h for h in headers if h[0].lower() not in names]
            return start_response(status, [*kept, *extra], *args)

        return self.app(environ, start_with_nonce)
