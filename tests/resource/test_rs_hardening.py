"""Resource-server hardening: audience, capped fetches, typed constructors, schemes, adapters."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import dpopkit
from dpopkit import DPoPKey, Reason, SecurityWarning, TemporarilyUnavailableError
from dpopkit.errors import InvalidTokenError, ServerConfigurationError
from dpopkit.resource.tokens import (
    AsyncIntrospectionTokens,
    AsyncJWTAccessTokens,
    IntrospectionTokens,
    JWTAccessTokens,
    TokenInfo,
)
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    CountedBytes,
    FloodServer,
    Introspector,
    Issuer,
    async_counting_client,
    counting_client,
    http_server,
)

# --- HD-12: an audience on both validator families --------------------------------------

VALIDATORS = ["jwt", "jwt-async", "introspection", "introspection-async"]
OTHER = "https://other-api.example"


def _validator(kind: str, issuer: Issuer, base: str, **audience: Any) -> Any:
    if kind.startswith("jwt"):
        cls: Any = AsyncJWTAccessTokens if kind.endswith("async") else JWTAccessTokens
        return cls(issuer=ISSUER, jwks=issuer.jwks(), **audience)
    cls = AsyncIntrospectionTokens if kind.endswith("async") else IntrospectionTokens
    return cls(
        endpoint=f"{base}/introspect",
        client_id="rs:1",
        client_secret="s&cret",
        allow_insecure_http=True,
        **audience,
    )


def _validate(tokens: Any, token: str) -> TokenInfo:
    if inspect.iscoroutinefunction(tokens.validate):
        result: TokenInfo = anyio.run(functools.partial(tokens.validate, token, now=NOW))
        return result
    info: TokenInfo = tokens.validate(token, now=NOW)
    return info


@pytest.fixture
def introspector() -> Any:
    server = Introspector()
    with http_server(server.routes) as base:
        yield server, base


@pytest.mark.parametrize("kind", VALIDATORS)
def test_hd12_audience_required_and_enforced_by_every_validator(
    kind: str, issuer: Issuer, introspector: Any
) -> None:
    """HD-12: JWT (RFC 9068 §4) and introspection (RFC 7662 §2.2) validators, sync and
    async, refuse construction without an audience and a token minted for another one."""
    server, base = introspector
    with pytest.raises(ServerConfigurationError):
        _validator(kind, issuer, base)
    tokens = _validator(kind, issuer, base, audience=AUDIENCE)
    key = DPoPKey.generate("ES256")
    server.answers["ours"] = {"active": True, "cnf": {"jkt": key.jkt}, "aud": AUDIENCE}
    server.answers["theirs"] = {"active": True, "cnf": {"jkt": key.jkt}, "aud": OTHER}
    server.answers["none"] = {"active": True, "cnf": {"jkt": key.jkt}, "aud": None}
    jwt = kind.startswith("jwt")
    ours = issuer.token(jkt=key.jkt) if jwt else "ours"
    assert _validate(tokens, ours).jkt == key.jkt
    for theirs in [issuer.token(jkt=key.jkt, aud=OTHER), issuer.token(jkt=key.jkt, aud=[OTHER])]:
        with pytest.raises(InvalidTokenError) as refused:
            _validate(tokens, theirs if jwt else "theirs")
        assert refused.value.reason is Reason.TOKEN_INVALID
        assert refused.value.detail["claim"] == "aud"
    if not jwt:
        with pytest.raises(InvalidTokenError) as missing:
            _validate(tokens, "none")
        assert missing.value.detail["claim"] == "aud"


@pytest.mark.parametrize("kind", VALIDATORS)
def test_hd12_audience_opt_out_is_explicit_and_loud(
    kind: str, issuer: Issuer, introspector: Any
) -> None:
    """HD-12: ``insecure_skip_audience_check=True`` (one name on every validator) accepts
    any aud with a SecurityWarning, and cannot be combined with an audience."""
    server, base = introspector
    with pytest.raises(ServerConfigurationError):
        _validator(kind, issuer, base, audience=AUDIENCE, insecure_skip_audience_check=True)
    with pytest.warns(SecurityWarning, match="insecure_skip_audience_check"):
        tokens = _validator(kind, issuer, base, insecure_skip_audience_check=True)
    key = DPoPKey.generate("ES256")
    server.answers["theirs"] = {"active": True, "cnf": {"jkt": key.jkt}, "aud": OTHER}
    token = issuer.token(jkt=key.jkt, aud=OTHER) if kind.startswith("jwt") else "theirs"
    assert _validate(tokens, token).jkt == key.jkt


# --- HD-13: fetched documents are streamed and abandoned at the cap ---------------------

CAP = 512 * 1024
CHUNK = 64 * 1024  # httpcore reads at most this much per chunk
#: what the kernel may hold between the server's write and the client's read on loopback
SOCKET_BUFFERS = 8 * 1024 * 1024


def _fetcher(
    kind: str, mode: str, base: str, client: Any, timeout: float = 20
) -> Callable[[], object]:
    """One fetch of ``kind`` through the public validator API (``mode``: sync or async)."""
    call: Callable[[], Any]
    if kind == "introspection":
        cls: Any = IntrospectionTokens if mode == "sync" else AsyncIntrospectionTokens
        tokens = cls(
            endpoint=f"{base}/introspect",
            client_id="rs",
            client_secret="x",
            audience=AUDIENCE,
            allow_insecure_http=True,
            http_client=client,
            timeout=timeout,
        )
        call = functools.partial(tokens.validate, "opaque", now=NOW)
    else:
        cls = JWTAccessTokens if mode == "sync" else AsyncJWTAccessTokens
        where = {"jwks_uri": f"{base}/jwks"} if kind == "jwks" else {}
        tokens = cls(
            issuer=base,
            audience=AUDIENCE,
            allow_insecure_http=True,
            http_client=client,
            timeout=timeout,
            **where,
        )
        call = functools.partial(tokens.refresh, now=NOW)
    if mode == "sync":
        return call
    return lambda: anyio.run(call)


def _client(mode: str, given: bool, counted: CountedBytes) -> Any:
    if not given:
        return None
    return counting_client(counted) if mode == "sync" else async_counting_client(counted)


def _close(client: Any) -> None:
    if client is None:
        return
    if inspect.iscoroutinefunction(getattr(client, "aclose", None)):
        anyio.run(client.aclose)
    else:
        client.close()


@pytest.mark.parametrize("given", [False, True], ids=["own-client", "given-client"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["discovery", "jwks", "introspection"])
def test_hd13_documents_are_abandoned_at_the_cap(kind: str, mode: str, given: bool) -> None:
    """HD-13: a 64 MiB discovery document, JWKS or introspection answer (RFC 8414 §3,
    RFC 7517 §5, RFC 7662 §2.2) is read in chunks and dropped past 512 KiB: the client
    pulls at most the cap plus one chunk, and the server writes no more than that plus
    the loopback socket buffers, before the request fails closed (503 upstream)."""
    counted = CountedBytes()
    client = _client(mode, given, counted)
    try:
        with FloodServer() as server:
            with pytest.raises(TemporarilyUnavailableError) as refused:
                _fetcher(kind, mode, server.base, client)()
            server.join()
    finally:
        _close(client)
    assert refused.value.reason is Reason.UPSTREAM_UNAVAILABLE
    assert refused.value.detail["source"] == kind
    fetches = 2 if kind == "discovery" else 1  # RFC 8414 then OpenID Connect Discovery
    assert len(server.sent) == fetches
    assert server.body_size > 4 * SOCKET_BUFFERS
    assert all(CAP < sent < CAP + SOCKET_BUFFERS for sent in server.sent), server.sent
    if given:
        assert CAP * fetches < counted.read <= fetches * (CAP + CHUNK)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["discovery", "jwks", "introspection"])
def test_hd13_declared_oversize_is_refused_before_the_body(kind: str, mode: str) -> None:
    """HD-13: a Content-Length above the cap (RFC 9110 §8.6) is refused before any of
    the body is read."""
    counted = CountedBytes()
    client = _client(mode, True, counted)
    try:
        with FloodServer(declare_length=True) as server:
            with pytest.raises(TemporarilyUnavailableError) as refused:
                _fetcher(kind, mode, server.base, client)()
            server.join()
    finally:
        _close(client)
    assert refused.value.reason is Reason.UPSTREAM_UNAVAILABLE
    assert counted.read == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["jwks", "introspection"])
def test_hd13_a_slow_drip_is_cut_at_the_timeout(kind: str, mode: str) -> None:
    """HD-13: ``timeout`` bounds the whole fetch, not each read: a server that sends one
    byte every 0.2 s (each read well within the timeout) is abandoned after ~1 s."""
    import time

    with FloodServer(body_size=64, chunk_size=1, delay=0.2) as server:
        fetch = _fetcher(kind, mode, server.base, None, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TemporarilyUnavailableError):
            fetch()
        elapsed = time.monotonic() - started
        server.join()
    assert elapsed < 2.0
    assert server.sent[0] < 20


# --- HD-29: typed keyword parameters on every public constructor --------------------------


#: Django apps: their modules subclass the framework's models and views, so they import only
#: inside a configured project (tests/integrations runs that project in a subprocess).
DJANGO_APPS = ("dpopkit.integrations.django_oauth_toolkit.",)


def _public_classes() -> list[tuple[str, type]]:
    """Every class a dpopkit module exports in ``__all__`` whose ``__init__`` is ours."""
    found: dict[str, type] = {}
    walked = pkgutil.walk_packages(dpopkit.__path__, "dpopkit.")
    names = ["dpopkit"] + [
        m.name
        for m in walked
        if m.name != "dpopkit.__main__" and not m.name.startswith(DJANGO_APPS)
    ]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed
            continue
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            init = getattr(obj, "__init__", None)
            if inspect.isclass(obj) and getattr(init, "__module__", "").startswith("dpopkit"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(found.items())


PUBLIC_CLASSES = _public_classes()


def test_hd29_the_walk_covers_every_role() -> None:
    """HD-29: the walk below sees the client, resource, server and storage classes."""
    names = {name for name, _ in PUBLIC_CLASSES}
    for expected in (
        "dpopkit.resource.jwt_tokens.JWTAccessTokens",
        "dpopkit.resource.introspection.IntrospectionTokens",
        "dpopkit.resource.guard.ResourceGuard",
        "dpopkit.storage.memory.MemoryReplayCache",
        "dpopkit.core.nonce.NonceIssuer",
    ):
        assert expected in names
    assert any(name.startswith("dpopkit.client.") for name in names)
    assert any(name.startswith("dpopkit.server.") for name in names)
    assert len(PUBLIC_CLASSES) > 40


@pytest.mark.parametrize(("name", "cls"), PUBLIC_CLASSES, ids=[n for n, _ in PUBLIC_CLASSES])
def test_hd29_public_constructors_have_typed_named_parameters(name: str, cls: type) -> None:
    """HD-29: no ``*args`` / ``**options`` hiding a constructor's parameters from IDEs and
    type checkers, and every parameter annotated (PEP 484)."""
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    params = list(signature.parameters.values())[1:]
    hidden = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not hidden, f"{name}.__init__ takes {hidden}"
    untyped = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    assert not untyped, f"{name}.__init__ leaves {untyped} untyped"


@pytest.mark.parametrize(
    ("sync", "async_"),
    [(JWTAccessTokens, AsyncJWTAccessTokens), (IntrospectionTokens, AsyncIntrospectionTokens)],
)
def test_hd29_sync_and_async_validators_take_the_same_parameters(sync: type, async_: type) -> None:
    """HD-29: the async validator spells out the same keyword parameters and defaults."""

    def shape(cls: type) -> list[tuple[str, Any, Any]]:
        params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
        return [(p.name, p.kind, p.default) for p in params if p.name != "http_client"]

    assert shape(sync) == shape(async_)


# --- HD-11: route-level adapters authenticate whatever else is (not) configured ----------

NONCE_SECRET = b"h" * 32


def _nonce_guard(issuer: Issuer, *, asynchronous: bool = False, nonce: bool = True) -> Any:
    from dpopkit import NonceIssuer, ProofPolicy
    from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
    from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
    from tests.resource._rs_support import Clock

    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    options: dict[str, Any] = {"tokens": tokens, "clock": Clock()}
    if nonce:
        options["nonces"] = NonceIssuer([NONCE_SECRET])
        options["policy"] = ProofPolicy(require_nonce=True)
    if asynchronous:
        return AsyncResourceGuard(replay=AsyncMemoryReplayCache(), **options)
    return ResourceGuard(replay=MemoryReplayCache(), **options)


@pytest.fixture
def django_settings() -> Any:
    """Django configured for the tests; MIDDLEWARE and DPOPKIT restored afterwards."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="dpopkit-tests-only",
            ALLOWED_HOSTS=["api.example"],
            ROOT_URLCONF="tests.resource._rs_django_urls",
            MIDDLEWARE=["dpopkit.resource.django.DPoPMiddleware"],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    saved = (settings.MIDDLEWARE, getattr(settings, "DPOPKIT", None))
    yield settings
    settings.MIDDLEWARE, settings.DPOPKIT = saved


Served = Callable[[], int]
Send = Callable[[str, list[tuple[str, str]]], Any]


def _django_route(
    settings: Any, guard: Any, *, middleware: bool, view: str
) -> tuple[Send, str, Served]:
    from django.core.handlers.asgi import ASGIHandler  # type: ignore[import-untyped]
    from django.core.handlers.wsgi import WSGIHandler  # type: ignore[import-untyped]

    from tests.resource import _rs_django_urls
    from tests.resource._rs_support import ORIGIN, asgi_requester, wsgi_requester

    settings.MIDDLEWARE = ["dpopkit.resource.django.DPoPMiddleware"] if middleware else []
    settings.DPOPKIT = {"guard": guard, "public_origin": ORIGIN}
    path = {"marked": "/marked", "class": "/class", "hidden": "/hidden", "async": "/marked-async"}
    if view == "async":
        request = asgi_requester(ASGIHandler(), "asyncio")
    else:
        request = wsgi_requester(WSGIHandler())
    before = len(_rs_django_urls.SERVED)
    return (
        lambda p, headers: request("GET", p, headers),
        path[view],
        lambda: len(_rs_django_urls.SERVED) - before,
    )


def _flask_route(guard: Any) -> tuple[Send, str, Served]:
    from flask import Flask

    from dpopkit.resource.flask import DPoP, current_principal
    from tests.resource._rs_support import ORIGIN, wsgi_requester

    app = Flask("hd11")
    dpop = DPoP(guard=guard, public_origin=ORIGIN)  # init_app never called
    served: list[str] = []

    @app.get("/marked")
    @dpop.required("read")
    def marked() -> dict[str, Any]:
        served.append("marked")
        return {"sub": current_principal().sub}

    request = wsgi_requester(app)
    return (lambda p, headers: request("GET", p, headers)), "/marked", lambda: len(served)


ROUTE_CASES = [
    *[
        f"django-{mw}-{view}"
        for mw in ("no-middleware", "middleware")
        for view in ("marked", "class", "hidden", "async")
    ],
    "flask-no-init-app",
    "fastapi",
]


@pytest.mark.parametrize("case", ROUTE_CASES)
def test_hd11_route_level_protection_needs_no_middleware(
    case: str, issuer: Issuer, key: DPoPKey, request: pytest.FixtureRequest
) -> None:
    """HD-11: a route-level adapter authenticates its view itself when what usually runs
    first is missing (Django without DPoPMiddleware, a mark the middleware cannot see on a
    class-based or re-wrapped view; Flask without init_app; the FastAPI dependency, which
    needs nothing else): no credentials get the 401
    challenge (RFC 9449 §7.1) and the view never runs; an accepted request gets the fresh
    DPoP-Nonce (RFC 9449 §9) on the view's own response."""
    from dpopkit import parse_challenges
    from tests.resource._rs_support import ORIGIN, dpop_headers

    guard = _nonce_guard(issuer, asynchronous=case == "fastapi")
    if case == "fastapi":
        send, path, served = _fastapi_route(guard)
    elif case.startswith("django"):
        settings = request.getfixturevalue("django_settings")
        mw, view = case.removeprefix("django-").rsplit("-", 1)
        send, path, served = _django_route(
            settings, guard, middleware=mw == "middleware", view=view
        )
    else:
        send, path, served = _flask_route(guard)
    anonymous = send(path, [])
    assert anonymous.status_code == 401
    (challenge,) = parse_challenges(anonymous.headers["www-authenticate"])
    assert challenge.is_scheme("DPoP")
    assert served() == 0
    token = issuer.token(jkt=key.jkt, scope="read")
    url = f"{ORIGIN}{path}"
    no_nonce = send(path, dpop_headers(key, token, url=url))
    assert no_nonce.status_code == 401
    assert parse_challenges(no_nonce.headers["www-authenticate"])[0].params["error"] == (
        "use_dpop_nonce"
    )
    old = guard.nonces.issue(now=NOW - 60)  # valid but not current: a fresh one comes back
    accepted = send(path, dpop_headers(key, token, url=url, nonce=old))
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["dpop-nonce"] == guard.nonces.issue(now=NOW)
    assert served() == 1
    scope_token = issuer.token(jkt=key.jkt, scope="write")
    nonce = guard.nonces.issue(now=NOW)
    short = send(path, dpop_headers(key, scope_token, url=url, nonce=nonce))
    assert short.status_code == 403
    assert served() == 1
    assert guard.metrics.snapshot()["accepted"] == {"DPoP": 1}


def _wrong_guard_cases() -> list[Callable[[Any, Any], object]]:
    from tests.resource._rs_support import ORIGIN, Calls, asgi_app, wsgi_app

    def flask(sync: Any, async_: Any) -> object:
        from dpopkit.resource.flask import DPoP

        return DPoP(guard=async_, public_origin=ORIGIN)

    def fastapi(sync: Any, async_: Any) -> object:
        from dpopkit.resource.fastapi import DPoPSecurity

        return DPoPSecurity(sync, public_origin=ORIGIN)

    def asgi(sync: Any, async_: Any) -> object:
        from dpopkit.resource.asgi import DPoPMiddleware

        return DPoPMiddleware(asgi_app(Calls()), guard=sync, public_origin=ORIGIN)

    def wsgi(sync: Any, async_: Any) -> object:
        from dpopkit.resource.wsgi import DPoPWSGIMiddleware

        return DPoPWSGIMiddleware(wsgi_app(Calls()), guard=async_, public_origin=ORIGIN)

    return [flask, fastapi, asgi, wsgi]


@pytest.mark.parametrize("make", _wrong_guard_cases(), ids=lambda f: f.__name__)
def test_hd11_adapter_refuses_the_wrong_guard_kind(
    make: Callable[[Any, Any], object], issuer: Issuer
) -> None:
    """HD-11: every adapter refuses, at construction, a guard it cannot await or call
    (Flask given the async guard used to run the view with a coroutine as principal)."""
    sync, async_ = _nonce_guard(issuer), _nonce_guard(issuer, asynchronous=True)
    with pytest.raises(TypeError):
        make(sync, async_)


@pytest.mark.parametrize("dpopkit_setting", ["missing", "async-guard"])
def test_hd11_django_decorator_fails_closed_when_misconfigured(
    dpopkit_setting: str, issuer: Issuer, django_settings: Any
) -> None:
    """HD-11: with no usable DPOPKIT setting the decorated view is not served: Django's
    ImproperlyConfigured answers 500 (a server fault, logged), never the view."""
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import RequestFactory  # type: ignore[import-untyped]

    from tests.resource import _rs_django_urls

    django_settings.MIDDLEWARE = []
    if dpopkit_setting == "missing":
        django_settings.DPOPKIT = None
    else:
        django_settings.DPOPKIT = {"guard": _nonce_guard(issuer, asynchronous=True)}
    before = len(_rs_django_urls.SERVED)
    with pytest.raises(ImproperlyConfigured):
        _rs_django_urls.marked(RequestFactory().get("/marked", HTTP_HOST="api.example"))
    from tests.resource._rs_support import wsgi_requester

    response = wsgi_requester(WSGIHandler())("GET", "/marked", [])
    assert response.status_code == 500
    assert len(_rs_django_urls.SERVED) == before


# --- HD-16: a Bearer token at a DPoP-only resource is told why ---------------------------


def _fastapi_route(guard: Any) -> tuple[Send, str, Served]:
    from fastapi import FastAPI, Security

    from dpopkit.resource.fastapi import DPoPSecurity
    from dpopkit.resource.guard import DPoPPrincipal
    from tests.resource._rs_support import ORIGIN, asgi_requester

    auth = DPoPSecurity(guard, public_origin=ORIGIN)
    app = FastAPI()
    served: list[str] = []

    @app.get("/marked")
    async def marked(
        principal: DPoPPrincipal = Security(auth, scopes=["read"]),  # noqa: B008
    ) -> dict[str, Any]:
        served.append("marked")
        return {"sub": principal.sub}

    request = asgi_requester(app, "asyncio")
    return (lambda p, headers: request("GET", p, headers)), "/marked", lambda: len(served)


def _middleware_route(guard: Any, kind: str) -> tuple[Send, str, Served]:
    from dpopkit.resource.asgi import DPoPMiddleware
    from dpopkit.resource.wsgi import DPoPWSGIMiddleware
    from tests.resource._rs_support import (
        ORIGIN,
        Calls,
        asgi_app,
        asgi_requester,
        wsgi_app,
        wsgi_requester,
    )

    calls = Calls()
    if kind == "asgi":
        app: Any = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
        request = asgi_requester(app, "asyncio")
    else:
        app = DPoPWSGIMiddleware(wsgi_app(calls), guard=guard, public_origin=ORIGIN)
        request = wsgi_requester(app)
    return (lambda p, headers: request("GET", p, headers)), "/marked", lambda: calls.count


ADAPTERS = ["guard", "asgi", "wsgi", "fastapi", "flask", "django"]


@pytest.mark.parametrize("bound", [True, False], ids=["bound-token", "unbound-token"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hd16_bearer_at_a_dpop_only_resource_is_invalid_token(
    adapter: str, bound: bool, issuer: Issuer, key: DPoPKey, request: pytest.FixtureRequest
) -> None:
    """HD-16: ``Authorization: Bearer`` at a resource accepting only DPoP gets 401 with a
    DPoP challenge carrying error="invalid_token" and an error_description (RFC 9449 §7.1,
    §7.2; RFC 6750 §3.1), reason ``dpop_required``; an unknown
    scheme still gets the bare challenge."""
    from dpopkit import Headers, RequestView, parse_challenges
    from tests.resource._rs_support import ORIGIN

    asynchronous = adapter in ("asgi", "fastapi")
    guard = _nonce_guard(issuer, asynchronous=asynchronous, nonce=False)
    token = issuer.token(jkt=key.jkt if bound else None, scope="read")
    if adapter == "guard":
        view = RequestView(
            method="GET",
            url=f"{ORIGIN}/marked",
            headers=Headers([("Authorization", f"Bearer {token}")]),
        )
        with pytest.raises(InvalidTokenError) as refused:
            guard.authenticate(view)
        assert refused.value.reason is Reason.DPOP_REQUIRED
        rendered = guard.error_response(refused.value)
        status, headers = rendered.status, dict(rendered.headers)
        with pytest.raises(InvalidTokenError) as unknown:
            guard.authenticate(_basic(view))
        basic_challenge = dict(guard.error_response(unknown.value).headers)["WWW-Authenticate"]
        served = 0
    else:
        if adapter == "django":
            settings = request.getfixturevalue("django_settings")
            send, path, count = _django_route(settings, guard, middleware=True, view="marked")
        elif adapter == "flask":
            send, path, count = _flask_route(guard)
        elif adapter == "fastapi":
            send, path, count = _fastapi_route(guard)
        else:
            send, path, count = _middleware_route(guard, adapter)
        response = send(path, [("Authorization", f"Bearer {token}")])
        status = response.status_code
        headers = {"WWW-Authenticate": response.headers["www-authenticate"]}
        basic_challenge = send(path, [("Authorization", "Basic dXNlcjpwYXNz")]).headers[
            "www-authenticate"
        ]
        served = count()
    assert status == 401
    (challenge,) = parse_challenges(headers["WWW-Authenticate"])
    assert challenge.is_scheme("DPoP")
    assert challenge.params["error"] == "invalid_token"
    assert challenge.params["error_description"]
    assert challenge.params["algs"]
    assert served == 0
    assert guard.metrics.snapshot()["rejected"]["dpop_required"] == 1
    (bare,) = parse_challenges(basic_challenge)
    assert bare.is_scheme("DPoP")
    assert "error" not in bare.params  # RFC 6750 §3.1: an unknown scheme gets no error


def _basic(view: Any) -> Any:
    from dpopkit import Headers, RequestView

    return RequestView(
        method=view.method, url=view.url, headers=Headers([("Authorization", "Basic dXNlcjpw")])
    )
