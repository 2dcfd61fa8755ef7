"""The validated-token cache of the JWT validators (RFC 9068 §4, RFC 9449 §7).

A remembered validation stands in for a full one only when a full one would answer the
same: the exact same token text, ``now`` inside its ``nbf``/``iat`` .. ``exp`` window (with
the leeway), and the keys it was verified with. The checks that depend on the request
(``cnf.jkt`` against the proof key, ``ath``, scopes, replay) run on every request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from dpopkit import DPoPError, DPoPKey, InvalidTokenError, Reason
from dpopkit.core.http import Headers, RequestView
from dpopkit.core.jws import b64url_encode
from dpopkit.resource.guard import ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.storage.memory import MemoryReplayCache
from tests.resource._rs_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    ORIGIN,
    Clock,
    Issuer,
    KeyServer,
    dpop_headers,
    http_server,
)


def static(issuer: Issuer, **options: Any) -> JWTAccessTokens:
    return JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks(), **options)


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    with http_server(server.routes) as base:
        server.publish_metadata(base)
        yield server


@pytest.mark.parametrize("leeway", [0, 5])
def test_rfc9068_s4_cached_token_refused_from_exp_plus_leeway_exactly(
    issuer: Issuer, leeway: float
) -> None:
    tokens = static(issuer, leeway=leeway)
    token = issuer.token(lifetime=10)  # exp = NOW + 10
    tokens.validate(token, now=NOW)
    assert tokens.cached_tokens == 1
    assert tokens.validate(token, now=NOW + 10 + leeway - 0.001).sub == "alice"
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate(token, now=NOW + 10 + leeway)
    assert exc.value.reason is Reason.TOKEN_EXPIRED
    assert tokens.cached_tokens == 0  # an expired entry is dropped when met


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_rfc9068_s4_cached_token_refused_before_nbf_or_iat(issuer: Issuer, claim: str) -> None:
    """A clock that steps back does not make the cache accept what a full check refuses."""
    tokens = static(issuer, leeway=0)
    claims: dict[str, Any] = {claim: int(NOW) + 100}
    token = issuer.token(lifetime=600, **claims)
    tokens.validate(token, now=NOW + 100)
    assert tokens.cached_tokens == 1
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate(token, now=NOW + 99)
    assert exc.value.reason is Reason.TOKEN_INVALID
    assert exc.value.detail["claim"] == claim


def test_rfc9068_s4_same_claims_other_signature_verified_in_full() -> None:
    issuer = Issuer(alg="ES256", key=DPoPKey.generate("ES256"))  # randomised signatures
    tokens = static(issuer)
    token = issuer.token()
    tokens.validate(token, now=NOW)
    signing_input, _, signature = token.rpartition(".")
    stranger = DPoPKey.generate("ES256")
    forged = [
        f"{signing_input}.{b64url_encode(stranger.sign(signing_input.encode()))}",
        f"{signing_input}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BA'}",
    ]
    for other in forged:
        with pytest.raises(InvalidTokenError) as exc:
            tokens.validate(other, now=NOW)
        assert exc.value.reason is Reason.TOKEN_INVALID
        assert exc.value.detail["jws"] == "bad_signature"
    # A second valid signature over the same claims is another token: verified, remembered.
    again = f"{signing_input}.{b64url_encode(issuer.key.sign(signing_input.encode()))}"
    assert again != token
    assert tokens.validate(again, now=NOW).sub == "alice"
    assert tokens.cached_tokens == 2


def test_rfc9068_s4_cache_size_bound_holds(issuer: Issuer) -> None:
    tokens = static(issuer, cache_size=2)
    issued = [issuer.token(scope=f"s{index}") for index in range(5)]
    for token in issued:
        tokens.validate(token, now=NOW)
        assert tokens.cached_tokens <= 2
    assert tokens.cached_tokens == 2
    for token in issued:  # dropped ones are verified again
        assert tokens.validate(token, now=NOW).sub == "alice"
    off = static(issuer, cache_size=0)
    off.validate(issued[0], now=NOW)
    assert off.cached_tokens == 0


def test_rfc9068_s4_jwks_change_evicts(key_server: KeyServer) -> None:
    tokens = JWTAccessTokens(issuer=key_server.base, audience=AUDIENCE, allow_insecure_http=True)
    old = key_server.issuer("k1").token()
    tokens.validate(old, now=NOW)
    assert tokens.cached_tokens == 1
    # k1 withdrawn, k2 published: the first k2 token makes the validator fetch the keys.
    key_server.keys[:] = [Issuer(kid="k2", key=DPoPKey.generate("ES256"), alg="ES256")]
    assert tokens.validate(key_server.issuer("k2").token(), now=NOW + 40).sub == "alice"
    assert key_server.routes.hits["/jwks"] == 2
    assert tokens.cached_tokens == 1  # the k2 token only
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate(old, now=NOW + 41)
    assert exc.value.reason is Reason.TOKEN_INVALID


def test_rfc9068_s4_withdrawn_key_refused_once_keys_are_due(key_server: KeyServer) -> None:
    """Cached tokens do not keep stale keys alive: due keys are fetched, then checked."""
    tokens = JWTAccessTokens(
        issuer=key_server.base,
        audience=AUDIENCE,
        allow_insecure_http=True,
        cache_ttl=60,
        min_refresh_interval=30,
    )
    token = key_server.issuer("k1").token(lifetime=600)
    tokens.validate(token, now=NOW)
    key_server.keys[:] = [Issuer(kid="k2", key=DPoPKey.generate("ES256"), alg="ES256")]
    # Keys not yet due: the answer a full check gives with the keys held (no fetch).
    assert tokens.validate(token, now=NOW + 59).sub == "alice"
    assert key_server.routes.hits["/jwks"] == 1
    with pytest.raises(InvalidTokenError) as exc:
        tokens.validate(token, now=NOW + 60)
    assert exc.value.reason is Reason.TOKEN_INVALID
    assert key_server.routes.hits["/jwks"] == 2
    assert tokens.cached_tokens == 0


def test_rfc9068_s4_validation_under_replaced_keys_not_remembered(issuer: Issuer) -> None:
    """A validation that began before the keys were replaced is answered, not remembered."""
    tokens = static(issuer)
    token = issuer.token()
    began = tokens._generation
    info = tokens.validate(token, now=NOW)
    tokens._store({"keys": []}, NOW)  # keys replaced meanwhile (another thread's fetch)
    assert tokens.cached_tokens == 0
    tokens._remember(token, info, -math.inf, began)
    assert tokens.cached_tokens == 0


# --- the guard: request-bound checks run on every request, cached token or not ------------


def _request(key: DPoPKey, token: str, **options: Any) -> RequestView:
    return RequestView(
        method="GET", url=f"{ORIGIN}/hello", headers=Headers(dpop_headers(key, token, **options))
    )


def _reason(guard: ResourceGuard, request: RequestView, **options: Any) -> Reason:
    with pytest.raises(DPoPError) as exc:
        guard.authenticate(request, **options)
    return exc.value.reason


def test_rfc9449_s7_request_checks_run_on_a_cached_token(issuer: Issuer, key: DPoPKey) -> None:
    tokens = static(issuer)
    guard = ResourceGuard(tokens=tokens, replay=MemoryReplayCache(), clock=Clock())
    token = issuer.token(jkt=key.jkt, scope="read")
    first = _request(key, token)
    assert guard.authenticate(first).jkt == key.jkt
    assert tokens.cached_tokens == 1
    # RFC 9449 §4.3 (12), §7.1: the proof key must be the one the token is bound to.
    assert _reason(guard, _request(DPoPKey.generate("ES256"), token)) is Reason.JKT_MISMATCH
    # RFC 9449 §4.3 (12): ath of the presented token.
    other = issuer.token(jkt=key.jkt, scope="other")
    assert _reason(guard, _request(key, token, ath_token=other)) is Reason.ATH_MISMATCH
    # RFC 6750 §3.1: scopes of the route.
    assert _reason(guard, _request(key, token), required_scopes={"write"}) is Reason.SCOPE_MISSING
    # RFC 9449 §11.1: a proof is accepted once.
    assert _reason(guard, first) is Reason.REPLAYED_JTI
    assert guard.authenticate(_request(key, token)).scopes == {"read"}
