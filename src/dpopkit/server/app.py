"""The authorization server as a Starlette (ASGI) application.

Endpoints are thin ASGI adapters: read the request once into a
:class:`~dpopkit.RequestView`, call the framework-free endpoint
(:mod:`dpopkit.server.endpoints`) in a worker thread (the grant store is
synchronous SQLAlchemy), and copy the :class:`~dpopkit.ResponseView` out. No
DPoP logic lives here; this module only maps paths to endpoints.

Routes: ``/token``, ``/par``, ``/introspect``, ``/revoke``, ``/jwks``,
``/.well-known/oauth-authorization-server`` (RFC 8414), ``/authorize`` and, when
enabled, ``/register`` (RFC 7591). Browser-facing API endpoints answer CORS with
``Access-Control-Expose-Headers: DPoP-Nonce`` (RFC 9449 §8, AS-20).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from ipaddress import ip_address
from urllib.parse import parse_qs, urlsplit

from dpopkit.core.http import Headers, RequestView, ResponseView
from dpopkit.errors import Reason, ServerConfigurationError, requires_extra
from dpopkit.server.endpoints import jwks as jwks_endpoint
from dpopkit.server.endpoints import metadata as metadata_endpoint
from dpopkit.server.endpoints.authorize import AuthorizationEndpoint
from dpopkit.server.endpoints.register import handle_register, registration_rate_limiter
from dpopkit.server.parsing import MAX_BODY_BYTES
from dpopkit.server.service import TokenService
from dpopkit.server.throttle import WouldBlockError, no_waiting
from dpopkit.server.users import Authenticator
from dpopkit.storage.counters import CounterStore

with requires_extra("server", needed_by=__name__):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import BaseRoute, Route
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["create_app", "is_loopback_host"]

MAX_BODY = MAX_BODY_BYTES
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, DPoP"
_CORS_EXPOSE_HEADERS = "DPoP-Nonce, WWW-Authenticate"

Handler = Callable[[RequestView], ResponseView]
logger = logging.getLogger("dpopkit.server")

#: Endpoints that count requests by client address (login throttle, registration limit).
_BY_ADDRESS = ("/authorize", "/register")
_forwarding_warned = False


def _warn_untrusted_forwarding(headers: Headers) -> None:
    """Log once per process that a proxy's X-Forwarded-For is not believed.

    Unless ``FORWARDED_ALLOW_IPS`` names the proxy, every client behind it shares one
    address budget.
    """
    global _forwarding_warned
    if _forwarding_warned or headers.get("x-forwarded-for") is None:
        return
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        return
    _forwarding_warned = True
    logger.warning(
        "X-Forwarded-For is not believed: the client address of the login throttle and the "
        "registration limit is the TCP peer; set FORWARDED_ALLOW_IPS to the proxy's address",
        extra={"reason": "untrusted_forwarding"},
    )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (test mode binds only there)."""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _send(send: Send, view: ResponseView, extra: Sequence[tuple[str, str]] = ()) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in view.headers]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra]
    headers.append((b"content-length", str(len(view.body)).encode()))
    await send({"type": "http.response.start", "status": view.status, "headers": headers})
    await send({"type": "http.response.body", "body": view.body})


def _oauth_error(
    status: int, error: str, description: str, *extra: tuple[str, str]
) -> ResponseView:
    """An RFC 6749 §5.2 error body for answers given before a handler runs."""
    return ResponseView(
        status=status,
        headers=(("Content-Type", "application/json"), ("Cache-Control", "no-store"), *extra),
        body=json.dumps({"error": error, "error_description": description}).encode(),
        reason=error,
    )


def _error_code(response: ResponseView) -> str | None:
    """The ``error`` of an RFC 6749 §5.2 JSON body, or of an error redirect, for logs."""
    location = response.header("location")
    if location is not None:
        values = parse_qs(urlsplit(location).query).get("error")
        return values[0] if values else None
    if not (response.header("content-type") or "").startswith("application/json"):
        return None
    try:
        error = json.loads(response.body).get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, str) else None


def _plain(status: int, text: str) -> ResponseView:
    return ResponseView(
        status=status,
        headers=(("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")),
        body=text.encode(),
    )


class _Endpoint:
    """A pure ASGI endpoint around a framework-free handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        issuer: str,
        path: str,
        methods: Sequence[str] = ("POST",),
        cors_origins: Sequence[str] = (),
        loopback_only: bool = False,
        on_loop: bool = False,
    ) -> None:
        self.handler = handler
        self.on_loop = on_loop
        self.counts_by_address = path in _BY_ADDRESS
        self.methods = tuple(methods)
        self.base_url = issuer + path
        self.path = path
        self.cors_origins = tuple(cors_origins)
        self.loopback_only = loopback_only

    def _cors(self, headers: Headers) -> list[tuple[str, str]]:
        origin = headers.get("origin")
        if origin is None or not self.cors_origins:
            return []
        if "*" in self.cors_origins:
            allow = "*"
        elif origin in self.cors_origins:
            allow = origin
        else:
            return []
        out = [
            ("Access-Control-Allow-Origin", allow),
            ("Access-Control-Expose-Headers", _CORS_EXPOSE_HEADERS),  # AS-20
        ]
        if allow != "*":
            out.append(("Vary", "Origin"))
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        headers = Headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])
        )
        if self.loopback_only:
            client = scope.get("client")
            if client is None or not is_loopback_host(str(client[0])):
                await _send(send, _plain(403, "test mode answers loopback clients only"))
                return
        if self.counts_by_address:
            _warn_untrusted_forwarding(headers)
        cors = self._cors(headers)
        method = scope["method"]
        if method == "OPTIONS":
            preflight = [
                *cors,
                ("Access-Control-Allow-Methods", "GET, POST"),
                ("Access-Control-Allow-Headers", _CORS_ALLOW_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ]
            await _send(send, ResponseView(status=204), preflight if cors else ())
            return
        if method not in self.methods:
            # RFC 9110 §15.5.6, with the endpoint's OAuth error shape.
            allow = ", ".join((*self.methods, "OPTIONS"))
            refused = _oauth_error(405, "invalid_request", "method not allowed", ("Allow", allow))
            await self._answer(send, refused, cors, method)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                too_large = _oauth_error(413, "invalid_request", "request body too large")
                await self._answer(
                    send, replace(too_large, reason=Reason.TOO_LARGE.value), cors, method
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        query = scope.get("query_string", b"").decode("latin-1")
        peer = scope.get("client")
        view = RequestView(
            method=method,
            url=self.base_url + (f"?{query}" if query else ""),
            headers=headers,
            body=b"".join(chunks),
            client_address=None if not peer else str(peer[0]),
        )
        try:
            response = self._on_loop(view) if self.on_loop else None
            if response is None:
                response = await run_in_threadpool(self.handler, view)
        except Exception:
            # Last resort only: input errors are typed and answered by the handlers, store
            # outages are 503. Anything reaching here is a defect: logged with its stack.
            logger.exception("unhandled error at %s", self.base_url)
            response = _oauth_error(500, "server_error", "internal error")
        await self._answer(send, response, cors, method)

    def _on_loop(self, view: RequestView) -> ResponseView | None:
        """Run the handler here, on the event loop, unless it needs scrypt (None then).

        Only for handlers whose stores are local (no network wait) and which reach any
        scrypt work before writing anything: handing a request to a thread costs more
        than the rest of a token request, yet a scrypt check must never hold the loop.
        """
        try:
            with no_waiting():
                return self.handler(view)
        except WouldBlockError:
            return None

    async def _answer(
        self, send: Send, response: ResponseView, cors: list[tuple[str, str]], method: str
    ) -> None:
        """Send ``response``; a refusal is logged in one line with its reason code.

        Never the request's parameters, tokens, proofs or secrets: only the endpoint, the
        method, the status and the codes.
        """
        if response.status >= 400 or response.reason is not None:
            logger.info(
                "as rejected endpoint=%s method=%s status=%d error=%s reason=%s",
                self.path,
                method,
                response.status,
                _error_code(response),
                response.reason,
            )
        await _send(send, response, cors)


def create_app(
    service: TokenService,
    *,
    authenticator: Authenticator,
    cors_origins: Sequence[str] = ("*",),
    csrf_secret: bytes | None = None,
    mounts: Sequence[tuple[str, ASGIApp]] = (),
    counters: CounterStore | None = None,
) -> Starlette:
    """Build the authorization server's ASGI application.

    Args:
        service: the :class:`TokenService`.
        authenticator: checks user credentials on the login page.
        cors_origins: origins allowed to call the token-side endpoints from a browser
            (``"*"`` for any; the endpoints use no cookies). ``/authorize`` has no CORS.
        csrf_secret: key for the login form CSRF tokens (random when None).
        mounts: extra ``(path, app)`` pairs served as they are (the scope is untouched),
            e.g. the demo protected API at ``/api/whoami``.
        counters: where the login throttle and the ``/register`` limit keep their
            counts (HD-3, HD-2); a shared store (Redis) gives every instance one budget.
            Default: in memory, per process.

    Raises:
        ServerConfigurationError: test mode with a non-loopback issuer.
    """
    settings = service.settings
    if settings.test_mode_user is not None:
        host = urlsplit(settings.issuer).hostname or ""
        if not is_loopback_host(host):
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "test mode runs on a loopback issuer only"
            )
    authorize = AuthorizationEndpoint(
        service, authenticator, csrf_secret=csrf_secret, counters=counters
    )
    issuer = settings.issuer

    def metadata(_: RequestView) -> ResponseView:
        return metadata_endpoint.handle(service)

    def jwks(_: RequestView) -> ResponseView:
        return jwks_endpoint.handle(service)

    def favicon(_: RequestView) -> ResponseView:
        return ResponseView(status=204, headers=(("Cache-Control", "max-age=86400"),))

    # The token endpoint runs on the event loop when nothing it does can wait on a
    # network; a request that needs scrypt (a client secret not verified yet) goes to a
    # thread. Client authentication comes before anything /token writes (SEC-99).
    token_on_loop = service.stores_are_local()

    def endpoint(
        handler: Handler, path: str, *, cors: bool = True, methods: Sequence[str] = ("POST",)
    ) -> _Endpoint:
        return _Endpoint(
            handler,
            issuer=issuer,
            path=path,
            methods=methods,
            cors_origins=cors_origins if cors else (),
            loopback_only=path == "/authorize" and settings.test_mode_user is not None,
            on_loop=token_on_loop and path == "/token",
        )

    # Every method reaches the endpoint, which answers 405 itself in the OAuth error shape.
    get = ("GET", "HEAD")
    routes: list[BaseRoute] = [
        Route("/token", endpoint(service.handle_token, "/token")),
        Route("/par", endpoint(service.handle_par, "/par")),
        Route("/introspect", endpoint(service.handle_introspect, "/introspect")),
        Route("/revoke", endpoint(service.handle_revoke, "/revoke")),
        Route("/jwks", endpoint(jwks, "/jwks", methods=get)),
        Route(
            "/authorize",
            endpoint(authorize.handle, "/authorize", cors=False, methods=("GET", "POST")),
        ),
    ]
    # Browsers ask every origin for /favicon.ico; an empty answer keeps their consoles clean.
    routes.append(Route("/favicon.ico", endpoint(favicon, "/favicon.ico", methods=get)))
    well_known = "/.well-known/oauth-authorization-server"
    issuer_path = urlsplit(issuer).path
    for path in dict.fromkeys([well_known, well_known + issuer_path]):
        routes.append(Route(path, endpoint(metadata, path, methods=get)))
    if settings.registration_enabled:
        limiter = registration_rate_limiter(settings, clock=service.clock, counters=counters)

        def register(view: RequestView) -> ResponseView:
            return handle_register(service, view, limiter=limiter)

        routes.append(Route("/register", endpoint(register, "/register")))
    for path, app in mounts:
        # A plain route keeps the scope (path, root_path) exactly as the mounted app expects.
        routes.append(Route(path, app))
    return Starlette(routes=routes)
