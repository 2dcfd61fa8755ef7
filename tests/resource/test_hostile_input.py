"""HD-7: untrusted input never yields a 5xx at the resource server (only 503 for a store).

The ASGI and WSGI middleware (with a public origin, and behind trusted proxies) and
the ``dpopkit serve-api`` app (discovery and JWKS over real HTTP) get hostile
methods, paths, queries, ``Authorization``/``DPoP``/forwarding headers, access
tokens and proofs (claims of 10^400, NUL, lone surrogates, nesting). Every
rejection is a 401/400/403 with a ``WWW-Authenticate`` challenge and OAuth error
JSON (RFC 6750 §3, RFC 9449 §7.1) or the bare challenge (RFC 6750 §3.1), always
``Cache-Control: no-store``.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpopkit import DPoPKey, NonceIssuer, SecurityWarning, create_proof
from dpopkit.core.thumbprint import access_token_hash
from dpopkit.demo.api import WHOAMI_PATH, create_whoami_app
from dpopkit.resource.asgi import DPoPMiddleware, ProtectedResourceMetadata, ProxyTrust
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from tests.conftest import PG_DSN, missing_real_part
from tests.hostile import (
    HUGE,
    METHODS,
    Request,
    check_oauth_error,
    header_bytes,
    hostile_claims,
    send_asgi,
    send_wsgi,
    signed_jwt,
    urlencoded,
    values,
)
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    ORIGIN,
    Calls,
    Issuer,
    KeyServer,
    asgi_app,
    free_port,
    http_server,
    wsgi_app,
)

KEY = DPoPKey.generate("ES256")


@dataclass
class Target:
    """One protected app, how to reach it, and a live token it accepts."""

    send: Callable[[Request], httpx.Response]
    issuer: Issuer
    token: str
    path: str
    proxied: bool = False
    examples: int = 80


def _guard_options() -> dict[str, Any]:
    return {
        "nonces": NonceIssuer([b"r" * 32], context="rs-hostile"),
        "accept_bearer": True,
        "required_scopes": ["read"],
    }


_METADATA = ProtectedResourceMetadata(resource=ORIGIN, authorization_servers=[ISSUER])
_PROXIES = ProxyTrust(forwarded=1, port=1, prefix=1)


def _middleware(kind: str, proxied: bool, replay: Any = None) -> Target:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # accept_bearer=True, on purpose
        return _build_middleware(kind, proxied, replay)


def _build_middleware(kind: str, proxied: bool, replay: Any) -> Target:
    issuer = Issuer()
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    site: dict[str, Any] = {"metadata": _METADATA}
    if proxied:
        site["trusted_proxies"] = _PROXIES
    else:
        site["public_origin"] = ORIGIN
    token = issuer.token(jkt=KEY.jkt, now=time.time(), lifetime=3600)
    if kind == "asgi":
        aguard = AsyncResourceGuard(
            tokens=tokens, replay=AsyncMemoryReplayCache(), **_guard_options()
        )
        app: Any = DPoPMiddleware(asgi_app(Calls()), guard=aguard, **site)
        return Target(lambda r: send_asgi(app, ORIGIN, r), issuer, token, "/hello", proxied)
    guard = ResourceGuard(tokens=tokens, replay=replay or MemoryReplayCache(), **_guard_options())
    wapp: Any = DPoPWSGIMiddleware(wsgi_app(Calls()), guard=guard, **site)
    return Target(lambda r: send_wsgi(wapp, ORIGIN, r), issuer, token, "/hello", proxied)


@pytest.fixture(scope="module")
def serve_api() -> Iterator[Target]:
    keys = KeyServer()
    with http_server(keys.routes) as base:
        keys.publish_metadata(base)
        app = create_whoami_app(issuer=base, public_origin=ORIGIN, allow_insecure_http=True)
        issuer = keys.issuer()
        token = issuer.token(jkt=KEY.jkt, now=time.time(), lifetime=3600)
        yield Target(lambda r: send_asgi(app, ORIGIN, r), issuer, token, WHOAMI_PATH)


TARGETS = [
    "asgi",
    "asgi-proxied",
    "wsgi",
    "wsgi-proxied",
    "serve-api",
    pytest.param("wsgi-postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module")
def postgres_target() -> Iterator[Target]:
    """The WSGI middleware over a real PostgreSQL replay cache (a schema of its own)."""
    from dpopkit.storage.postgres import PostgresReplayCache

    schema = f"hd7rs_{uuid.uuid4().hex[:12]}"
    try:
        replay = PostgresReplayCache(PG_DSN, schema=schema)
        replay.check_and_store("probe", time.time() + 1, now=time.time())
    except Exception as exc:  # the server is absent: skip (or fail under CI)
        missing_real_part(f"PostgreSQL at {PG_DSN}: {type(exc).__name__}")
    target = _middleware("wsgi", False, replay)
    target.examples = 25
    yield target
    replay.close()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest) -> Target:
    name: str = request.param
    if name in ("serve-api", "wsgi-postgres"):
        fixture = "serve_api" if name == "serve-api" else "postgres_target"
        served: Target = request.getfixturevalue(fixture)
        return served
    return _middleware(name.split("-")[0], name.endswith("proxied"))


def _proof(method: str, url: str, token: str) -> str:
    return create_proof(KEY, htm=method, htu=url, access_token=token, allow_insecure_http=True)


@st.composite
def _hostile_token(draw: st.DrawFn, target: Target) -> str:
    """An access token signed by the trusted issuer, with hostile claim values."""
    name = draw(st.sampled_from(["exp", "iat", "nbf", "sub", "scope", "cnf", "aud", "client_id"]))
    value: object = draw(
        st.sampled_from(
            [10**400, -(10**400), 1e308, "\x00", "\ud800", [], {}, {"jkt": "\x00"}, True, None]
        )
        | values
    )
    try:
        claims: dict[str, Any] = {name: value}
        return target.issuer.token(jkt=KEY.jkt, now=time.time(), lifetime=3600, **claims)
    except (UnicodeEncodeError, ValueError):  # a lone surrogate cannot be signed as UTF-8
        huge: dict[str, Any] = {name: HUGE}
        return target.issuer.token(jkt=KEY.jkt, now=time.time(), **huge)


@st.composite
def _rs_request(draw: st.DrawFn, target: Target) -> Request:
    near = draw(st.sampled_from([True, True, False]))
    method = draw(st.sampled_from(["GET", "POST", "GET"] if near else METHODS))
    path = target.path + draw(
        st.sampled_from(["", "", "/x", "%00", "%ff", "/../..", "//"]) if not near else st.just("")
    )
    query = draw(st.just("") | urlencoded(["access_token", "a"]).map(lambda q: "?" + q))
    url = ORIGIN + target.path
    kind = draw(st.sampled_from(["live", "hostile", "hostile", "junk"]))
    token = target.token
    if kind == "hostile":
        token = draw(_hostile_token(target))
    elif kind == "junk":
        token = draw(values)
    scheme = draw(st.sampled_from(["DPoP"] * 4 + ["Bearer", "dpop", "Basic", ""]))
    headers: list[tuple[bytes, bytes]] = []
    if near or draw(st.booleans()):
        headers.append((b"authorization", f"{scheme} {token}".encode("utf-8", "surrogatepass")))
    proof_header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.public_jwk}
    ath = access_token_hash(target.token)
    hostile_proof = hostile_claims({"htm": method, "htu": url, "ath": ath}).map(
        lambda p: signed_jwt(KEY, proof_header, p).encode()
    )
    for _ in range(draw(st.integers(1 if near else 0, 2))):
        which = draw(st.sampled_from(["valid", "valid", "hostile", "junk"]))
        if which == "valid":
            bound = token if token and token.isascii() else target.token
            proof = _proof(method, url, bound).encode()
        else:
            proof = draw(hostile_proof if which == "hostile" else header_bytes)
        headers.append((b"dpop", proof))
    if target.proxied:
        headers.append((b"forwarded", b"proto=https;host=api.example"))
        headers.append((b"x-forwarded-port", b"443"))
        headers.append((b"x-forwarded-prefix", b""))
    extra = [b"forwarded", b"x-forwarded-port", b"x-forwarded-prefix", b"host", b"dpop"]
    for _ in range(draw(st.integers(0, 1 if near else 3))):
        headers.append((draw(st.sampled_from(extra)), draw(header_bytes)))
    return Request(method, path + query, headers)


def test_hd7_hostile_requests_get_oauth_errors_never_5xx(target: Target) -> None:
    """HD-7: hostile requests at each RS adapter get a 2xx or an RFC 6750 §3 / RFC 9449
    §7.1 error (JSON, ``WWW-Authenticate``, ``no-store``); 503 at most."""

    @settings(max_examples=target.examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=_rs_request(target))
    def run(request: Request) -> None:
        resp = target.send(request)
        check_oauth_error(resp, empty_challenge_ok=True, head=request.method == "HEAD")
        if 400 <= resp.status_code < 500 and resp.status_code != 405:
            assert "www-authenticate" in resp.headers, resp.headers

    run()


@pytest.mark.parametrize("exp", [HUGE, "-" + HUGE])
def test_hd7_access_token_exp_beyond_float_is_invalid_token(target: Target, exp: str) -> None:
    """HD-7: an access token with ``exp`` = ±10^400 is ``invalid_token`` (RFC 6750 §3.1)."""
    token = target.issuer.token(jkt=KEY.jkt, now=time.time(), exp=int(exp))
    url = ORIGIN + target.path
    headers = [
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", _proof("GET", url, token).encode()),
    ]
    if target.proxied:
        headers.append((b"forwarded", b"proto=https;host=api.example"))
        headers.append((b"x-forwarded-port", b"443"))
        headers.append((b"x-forwarded-prefix", b""))
    resp = target.send(Request("GET", target.path, headers))
    assert resp.status_code == 401
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_token"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "BREW"])
def test_hd7_serve_api_other_methods_get_an_oauth_error(serve_api: Target, method: str) -> None:
    """HD-7: ``dpopkit serve-api`` answers an authenticated request with another method
    405 and an OAuth error code (RFC 6750 §3.1 ``invalid_request``), ``no-store``."""
    url = ORIGIN + WHOAMI_PATH
    headers = [
        (b"authorization", f"DPoP {serve_api.token}".encode()),
        (b"dpop", _proof(method, url, serve_api.token).encode()),
    ]
    resp = serve_api.send(Request(method, WHOAMI_PATH, headers))
    assert resp.status_code == 405
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_request"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_hd7_replay_store_outage_is_503_json(kind: str) -> None:
    """HD-7: with the replay store unreachable (Redis on a closed port) a valid request is
    503 ``temporarily_unavailable`` JSON with ``no-store`` (fail closed, RFC 9449 §11.1)."""
    from dpopkit.storage.redis import AsyncRedisReplayCache, RedisReplayCache

    issuer = Issuer()
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks())
    dead = f"redis://127.0.0.1:{free_port()}/0"
    token = issuer.token(jkt=KEY.jkt, now=time.time(), lifetime=3600)
    url = ORIGIN + "/hello"
    headers = [
        (b"authorization", f"DPoP {token}".encode()),
        (b"dpop", _proof("GET", url, token).encode()),
    ]
    if kind == "asgi":
        areplay = AsyncRedisReplayCache.from_url(dead, timeout=0.5, check_server=False)
        aguard = AsyncResourceGuard(tokens=tokens, replay=areplay)
        app: Any = DPoPMiddleware(asgi_app(Calls()), guard=aguard, public_origin=ORIGIN)
        resp = send_asgi(app, ORIGIN, Request("GET", "/hello", headers))
    else:
        replay = RedisReplayCache.from_url(dead, timeout=0.5, check_server=False)
        guard = ResourceGuard(tokens=tokens, replay=replay)
        wapp: Any = DPoPWSGIMiddleware(wsgi_app(Calls()), guard=guard, public_origin=ORIGIN)
        resp = send_wsgi(wapp, ORIGIN, Request("GET", "/hello", headers))
    assert resp.status_code == 503
    check_oauth_error(resp)
    assert resp.json()["error"] == "temporarily_unavailable"
