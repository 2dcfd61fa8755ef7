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


def _fetcher(kind: str, mode: str, base: str, client: Any) -> Callable[[], object]:
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
            timeout=20,
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
            timeout=20,
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


# --- HD-29: typed keyword parameters on every public constructor --------------------------


def _public_classes() -> list[tuple[str, type]]:
    """Every class a dpopkit module exports in ``__all__`` whose ``__init__`` is ours."""
    found: dict[str, type] = {}
    walked = pkgutil.walk_packages(dpopkit.__path__, "dpopkit.")
    names = ["dpopkit"] + [m.name for m in walked if m.name != "dpopkit.__main__"]
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
        "dpopkit.resource.tokens.JWTAccessTokens",
        "dpopkit.resource.tokens.IntrospectionTokens",
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
