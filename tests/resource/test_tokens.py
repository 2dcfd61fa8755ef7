"""Token validation: RFC 9068 JWTs (X-5..X-8), JWKS discovery and rotation, RFC 7662 (X-17)."""

from __future__ import annotations

import base64
import functools
import json
import time
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, InvalidTokenError, Reason, TemporarilyUnavailableError
from dpopkit.core.jws import b64url_encode, json_dumps
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard
from dpopkit.resource.tokens import (
    AsyncIntrospectionTokens,
    AsyncJWTAccessTokens,
    CallableTokens,
    IntrospectionTokens,
    JWTAccessTokens,
    TokenInfo,
)
from dpopkit.storage.memory import AsyncMemoryReplayCache
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    Introspector,
    Issuer,
    KeyServer,
    dpop_headers,
    free_port,
    http_server,
)

JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def static(issuer: Issuer, **options: Any) -> JWTAccessTokens:
    return JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), **options)


# --- RFC 9068 rules (static JWKS) ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
def test_x6_signed_tokens_of_each_alg_accepted(alg: str) -> None:
    issuer = Issuer(alg=alg, key=DPoPKey.generate(alg))
    info = static(issuer).validate(issuer.token(jkt=JKT, scope="a b"), now=NOW)
    assert info.jkt == JKT
    assert info.scopes == {"a", "b"}
    assert info.sub == "alice"
    assert info.client_id == "client-1"
    assert info.exp == NOW + 300


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_x8_typ_at_jwt_forms_accepted(issuer: Issuer, typ: str) -> None:
    static(issuer).validate(issuer.token(header={"typ": typ}), now=NOW)


@pytest.mark.parametrize("typ", ["JWT", "dpop+jwt", None, "at+jwt+x"])
def test_x8_other_typ_rejected(issuer: Issuer, typ: str | None) -> None:
    with pytest.raises(InvalidTokenError) as exc:
        static(issuer).validate(issuer.token(header={"typ": typ}), now=NOW)
    assert exc.value.reason is Reason.TOKEN_INVALID


def test_x8_jwt_typ_accepted_when_configured(issuer: Issuer) -> None:
    """Issuers that emit typ JWT (Keycloak) can be accepted explicitly."""
    tokens = static(issuer, accept_typ=("at+jwt", "jwt"))
    tokens.validate(issuer.token(header={"typ": "JWT"}), now=NOW)


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [
            b64url_encode(json_dumps(header)),
            b64url_encode(json_dumps(payload)),
            b64url_encode(signature),
        ]
    )


def test_x6_alg_none_and_hs256_rejected(issuer: Issuer) -> None:
    """SEC-26 / SEC-28: alg none / HS256 with the public key as the MAC secret."""
    payload = json.loads(base64.urlsafe_b64decode(issuer.token().split(".")[1] + "=="))
    tokens = static(issuer)
    for alg in ("none", "HS256"):
        token = _forge({"typ": "at+jwt", "alg": alg, "kid": "k1"}, payload, b"x" * 32)
        if alg == "none":
            token = token.rsplit(".", 1)[0] + "."
        with pytest.raises(InvalidTokenError):
            tokens.validate(token, now=NOW)


def test_x8_signature_by_other_key_rejected(issuer: Issuer) -> None:
    other = Issuer(key=DPoPKey.generate("RS256"))
    with pytest.raises(InvalidTokenError):
        static(issuer).validate(other.token(), now=NOW)


def test_x8_tampered_payload_rejected(issuer: Issuer) -> None:
    header, _, sig = issuer.token(scope="read").split(".")
    payload = json.loads(base64.urlsafe_b64decode(issuer.token().split(".")[1] + "=="))
    payload["scope"] = "admin"
    with pytest.raises(InvalidTokenError):
        static(issuer).validate(f"{header}.{b64url_encode(json_dumps(payload))}.{sig}", now=NOW)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://other.example"}, Reason.TOKEN_INVALID),
        ({"iss": "https://as.example/"}, Reason.TOKEN_INVALID),
        ({"aud": "https://other.example"}, Reason.TOKEN_INVALID),
        ({"aud": ["https://a.example", "https://b.example"]}, Reason.TOKEN_INVALID),
        ({"exp": NOW - 31}, Reason.TOKEN_EXPIRED),
        ({"exp": "soon"}, Reason.TOKEN_INVALID),
        ({"nbf": NOW + 60}, Reason.TOKEN_INVALID),
        ({"iat": NOW + 60}, Reason.TOKEN_INVALID),
        ({"iat": True}, Reason.TOKEN_INVALID),
        ({"sub": 42}, Reason.TOKEN_INVALID),
    ],
)
def test_x8_claim_violations_rejected(
    issuer: Issuer, claims: dict[str, Any], reason: Reason
) -> None:
    with pytest.raises(InvalidTokenError) as exc:
        static(issuer).validate(issuer.token(**claims), now=NOW)
    assert exc.value.reason is reason


def test_x8_leeway_and_audience_list(issuer: Issuer) -> None:
    tokens = static(issuer)
    tokens.validate(issuer.token(exp=NOW - 29, aud=["x", AUDIENCE]), now=NOW)
    tokens.validate(issuer.token(nbf=NOW + 29), now=NOW)


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"])
def test_x7_required_claim_missing_rejected(issuer: Issuer, claim: str) -> None:
    with pytest.raises(InvalidTokenError) as exc:
        static(issuer).validate(issuer.token(drop=[claim]), now=NOW)
    assert exc.value.detail["claim"] == claim


def test_x5_cnf_unknown_member_ignored(issuer: Issuer) -> None:
    info = static(issuer).validate(issuer.token(cnf={"jkt": JKT, "foo": 1}), now=NOW)
    assert info.jkt == JKT


@pytest.mark.parametrize(
    "cnf",
    [
        {"jkt": JKT, "x5t#S256": "abc"},  # two confirmation keys (RFC 7800 §3.1)
        {"x5t#S256": "abc"},  # bound by mTLS: not checkable here, never "unbound"
        {"jwk": {"kty": "EC"}},
        {"jkt": JKT[:-1]},
        {"jkt": "a" * 64},  # hex SHA-256 (SEC-17)
        {"jkt": 7},
        "jkt",
        {},
    ],
)
def test_x5_cnf_must_name_exactly_one_jkt(issuer: Issuer, cnf: Any) -> None:
    with pytest.raises(InvalidTokenError):
        static(issuer).validate(issuer.token(cnf=cnf), now=NOW)


def test_scp_list_scopes(issuer: Issuer) -> None:
    info = static(issuer).validate(issuer.token(drop=["scope"], scp=["a", "b"]), now=NOW)
    assert info.scopes == {"a", "b"}


def test_private_key_in_jwks_is_never_used(issuer: Issuer) -> None:
    jwks = {"keys": [{**issuer.key.private_jwk(), "kid": "k1"}]}
    tokens = JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=jwks)
    with pytest.raises(InvalidTokenError):
        tokens.validate(issuer.token(), now=NOW)


def test_unknown_kid_with_static_jwks_is_invalid_token(issuer: Issuer) -> None:
    with pytest.raises(InvalidTokenError):
        static(issuer).validate(issuer.token(header={"kid": "nope"}), now=NOW)


def test_interop_pyjwt_and_joserfc_tokens_accepted(issuer: Issuer) -> None:
    """Differential: tokens minted by PyJWT and joserfc validate with our JWS layer."""
    import jwt as pyjwt
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import RSAKey

    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bob",
        "client_id": "c",
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "x",
        "cnf": {"jkt": JKT},
    }
    pem = issuer.key.to_pem()
    token1 = pyjwt.encode(claims, pem, algorithm="RS256", headers={"typ": "at+jwt", "kid": "k1"})
    token2 = jose_jwt.encode(
        {"typ": "at+jwt", "alg": "RS256", "kid": "k1"}, claims, RSAKey.import_key(pem)
    )
    for token in (token1, token2):
        assert static(issuer).validate(token, now=NOW).sub == "bob"


def test_validated_token_cache_respects_exp(issuer: Issuer) -> None:
    """A cached validation never outlives exp (+ leeway)."""
    tokens = static(issuer, leeway=0)
    token = issuer.token(lifetime=10)
    tokens.validate(token, now=NOW)
    tokens.validate(token, now=NOW + 9)
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate(token, now=NOW + 10)
    assert exc.value.reason is Reason.TOKEN_EXPIRED


def test_callable_tokens(issuer: Issuer) -> None:
    tokens = CallableTokens(lambda token: TokenInfo(jkt=JKT, sub=token))
    assert tokens.validate("abc", now=NOW).sub == "abc"


# --- JWKS over HTTP: discovery, rotation, rate limit, outage --------------------------------


@pytest.fixture
def key_server() -> Any:
    server = KeyServer()
    with http_server(server.routes) as base:
        server.publish_metadata(base)
        yield server


def test_jwks_discovery_rotation_one_refresh(key_server: KeyServer) -> None:
    """Unknown kid -> one refresh; a flood of unknown kids -> no refresh storm."""
    base = key_server.base
    tokens = JWTAccessTokens(
        issuer=base, audience=AUDIENCE, allow_insecure_http=True, min_refresh_interval=30
    )
    assert tokens.validate(key_server.issuer("k1").token(jkt=JKT), now=NOW).jkt == JKT
    assert key_server.routes.hits == {"/.well-known/oauth-authorization-server": 1, "/jwks": 1}
    # rotation: k2 appears; the first k2 token triggers exactly one refresh
    key_server.keys.append(Issuer(kid="k2", key=DPoPKey.generate("ES256"), alg="ES256"))
    k2 = key_server.issuer("k2")
    k2.alg = "ES256"
    assert tokens.validate(k2.token(), now=NOW + 40).sub == "alice"
    assert key_server.routes.hits["/jwks"] == 2
    # flood of unknown kids within the interval: rejected, no further fetch
    for index in range(50):
        with pytest.raises(InvalidTokenError):
            tokens.validate(k2.token(header={"kid": f"unknown-{index}"}), now=NOW + 41 + index / 10)
    assert key_server.routes.hits["/jwks"] == 2
    # after the interval one more refresh is allowed
    with pytest.raises(InvalidTokenError):
        tokens.validate(k2.token(header={"kid": "unknown-x"}), now=NOW + 80)
    assert key_server.routes.hits["/jwks"] == 3
    assert key_server.routes.hits["/.well-known/oauth-authorization-server"] == 1


def test_jwks_async_rotation_concurrent_single_fetch(key_server: KeyServer) -> None:
    """Async: 20 concurrent first requests share one fetch; rotation refreshes once."""
    base = key_server.base
    tokens = AsyncJWTAccessTokens(issuer=base, audience=AUDIENCE, allow_insecure_http=True)
    token = key_server.issuer("k1").token(jkt=JKT)
    results: list[str | None] = []

    async def main() -> None:
        async def one() -> None:
            results.append((await tokens.validate(token, now=NOW)).jkt)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)

    anyio.run(main)
    assert results == [JKT] * 20
    assert key_server.routes.hits["/jwks"] == 1
    key_server.keys.append(Issuer(kid="k2", key=DPoPKey.generate("RS256")))
    validate = functools.partial(tokens.validate, key_server.issuer("k2").token(), now=NOW + 60)
    info = anyio.run(validate, backend="trio")
    assert info.sub == "alice"
    assert key_server.routes.hits["/jwks"] == 2


def test_discovery_issuer_mismatch_refused(key_server: KeyServer) -> None:
    """X-16: metadata naming another issuer is not trusted."""
    base = key_server.base
    tokens = JWTAccessTokens(issuer=base + "/tenant", audience=AUDIENCE, allow_insecure_http=True)
    with pytest.raises(TemporarilyUnavailableError):
        tokens.validate(Issuer(issuer=base + "/tenant").token(), now=NOW)


def test_jwks_unreachable_is_503_then_recovers(key_server: KeyServer) -> None:
    """Nothing listens on the JWKS port: 503 within the time-out; then the server comes up."""
    port = free_port()
    tokens = JWTAccessTokens(
        issuer=key_server.base,
        audience=AUDIENCE,
        jwks_uri=f"http://127.0.0.1:{port}/jwks",
        allow_insecure_http=True,
        timeout=2.0,
    )
    token = key_server.issuer("k1").token()
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailableError) as exc:
        tokens.validate(token, now=NOW)
    assert exc.value.status_code == 503
    assert time.monotonic() - started < 2.5
    with http_server(key_server.routes, port=port):
        assert tokens.validate(token, now=NOW + 2).sub == "alice"


def test_jwks_outage_keeps_known_keys(key_server: KeyServer) -> None:
    tokens = JWTAccessTokens(
        issuer=key_server.base, audience=AUDIENCE, allow_insecure_http=True, cache_ttl=60
    )
    token = key_server.issuer("k1").token()
    tokens.validate(token, now=NOW)
    key_server.routes.get["/jwks"] = lambda: (500, {"error": "down"})
    fresh = key_server.issuer("k1").token(scope="other")  # not in the validated-token cache
    assert tokens.validate(fresh, now=NOW + 120).sub == "alice"  # stale keys still serve
    assert key_server.routes.hits["/jwks"] == 2


def test_rs_behind_middleware_with_jwks_over_http(key_server: KeyServer) -> None:
    """End to end: ASGI middleware + AsyncJWTAccessTokens found by discovery."""
    from tests.resource._rs_support import ORIGIN, Calls, Clock, asgi_app

    tokens = AsyncJWTAccessTokens(
        issuer=key_server.base, audience=AUDIENCE, allow_insecure_http=True
    )
    calls = Calls()
    guard = AsyncResourceGuard(tokens=tokens, replay=AsyncMemoryReplayCache(), clock=Clock())
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=ORIGIN)
    key = DPoPKey.generate("ES256")
    token = key_server.issuer("k1").token(jkt=key.jkt)

    async def main() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            return (await client.get("/hello", headers=dpop_headers(key, token))).status_code

    assert anyio.run(main, backend="trio") == 200


# --- introspection (RFC 7662) ---------------------------------------------------------------


@pytest.fixture
def introspector() -> Any:
    server = Introspector()
    with http_server(server.routes) as base:
        yield server, base


def _introspection(base: str, **options: Any) -> IntrospectionTokens:
    return IntrospectionTokens(
        endpoint=f"{base}/introspect",
        client_id="rs:1",
        client_secret="s&cret",
        allow_insecure_http=True,
        **{"audience": AUDIENCE, **options},
    )


def test_rs24_introspection_binding_and_cache(introspector: Any) -> None:
    """RS-24: cnf.jkt from introspection; cached until min(exp, ttl); client_secret_basic."""
    server, base = introspector
    server.answers["t1"] = {
        "active": True,
        "token_type": "DPoP",
        "cnf": {"jkt": JKT},
        "scope": "read",
        "sub": "u",
        "client_id": "c",
        "exp": NOW + 30,
    }
    tokens = _introspection(base, cache_ttl=60)
    info = tokens.validate("t1", now=NOW)
    assert (info.jkt, info.scopes, info.sub) == (JKT, frozenset({"read"}), "u")
    tokens.validate("t1", now=NOW + 10)
    assert server.routes.hits["/introspect"] == 1  # cached
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate("t1", now=NOW + 31)  # cache never outlives exp (X-17)
    assert exc.value.reason is Reason.TOKEN_EXPIRED
    assert server.routes.hits["/introspect"] == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"active": "true"},
        {"active": True, "token_type": "Bearer", "cnf": {"jkt": JKT}},
        {"active": True, "token_type": "DPoP"},
        {"active": True, "cnf": {"jkt": JKT}, "exp": NOW - 1},
    ],
)
def test_x17_inactive_or_inconsistent_answers_rejected(introspector: Any, answer: Any) -> None:
    server, base = introspector
    server.answers["t"] = answer
    with pytest.raises(InvalidTokenError):
        _introspection(base).validate("t", now=NOW)


def test_introspection_unreachable_is_503() -> None:
    tokens = IntrospectionTokens(
        endpoint=f"http://127.0.0.1:{free_port()}/introspect",
        client_id="rs",
        client_secret="x",
        audience=AUDIENCE,
        allow_insecure_http=True,
        timeout=2.0,
    )
    with pytest.raises(TemporarilyUnavailableError):
        tokens.validate("t", now=NOW)


def test_introspection_async_on_trio(introspector: Any) -> None:
    server, base = introspector
    server.answers["t2"] = {"active": True, "cnf": {"jkt": JKT}}
    tokens = AsyncIntrospectionTokens(
        endpoint=f"{base}/introspect",
        client_id="rs:1",
        client_secret="s&cret",
        audience=AUDIENCE,
        allow_insecure_http=True,
    )
    info = anyio.run(functools.partial(tokens.validate, "t2", now=NOW), backend="trio")
    assert info.jkt == JKT


def test_rs24_binding_enforced_locally_through_the_guard(introspector: Any) -> None:
    """RS-24: introspection supplies cnf.jkt; the RS checks the proof key itself."""
    from dpopkit.resource.guard import ResourceGuard
    from dpopkit.resource.wsgi import DPoPWSGIMiddleware
    from dpopkit.storage.memory import MemoryReplayCache
    from tests.resource._rs_support import ORIGIN, Calls, Clock, wsgi_app

    server, base = introspector
    key = DPoPKey.generate("ES256")
    server.answers["opaque-1"] = {"active": True, "token_type": "DPoP", "cnf": {"jkt": key.jkt}}
    guard = ResourceGuard(tokens=_introspection(base), replay=MemoryReplayCache(), clock=Clock())
    app = DPoPWSGIMiddleware(wsgi_app(Calls()), guard=guard, public_origin=ORIGIN)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN) as client:
        other = client.get("/hello", headers=dpop_headers(DPoPKey.generate("ES256"), "opaque-1"))
        assert other.status_code == 401
        assert guard.metrics.snapshot()["rejected"] == {"jkt_mismatch": 1}
        assert client.get("/hello", headers=dpop_headers(key, "opaque-1")).status_code == 200
    assert server.header_names
    assert all("dpop" not in names for names in server.header_names)  # no proof sent to the AS
