"""The token service, RequestView in / ResponseView out: RFC 9449 §5, §8, §10 (AS-*)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from dpopkit import DPoPKey, Headers, Reason, ReplayStoreError, RequestView, create_proof
from dpopkit.core.jws import b64url_encode
from dpopkit.server.authorize import AuthorizationEndpoint, ConfigUsers
from dpopkit.server.jwt import SigningKey
from dpopkit.server.service import JWT_BEARER_ASSERTION
from dpopkit.storage.sql import ClientRecord, sha256_hex

from .conftest import (
    AS,
    ISSUER,
    PAR_URL,
    REDIRECT,
    SECRET,
    TOKEN_URL,
    USERS,
    authorize_params,
    basic,
    body_of,
    code_from,
    code_params,
    drive_login,
    error_of,
    form_request,
    get_code,
    jwt_parts,
    make_service,
    pkce,
)

CC = {"grant_type": "client_credentials"}


# --- AS-1: every proof check at /token ------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"url": ISSUER + "/other"}, "htu"),
        ({"url": "http://evil.test/token"}, "htu"),
        ({"htm": "GET"}, "htm"),
        ({"iat": -3600}, "iat"),
        ({"iat": 3600}, "iat"),
        ({"tamper": True}, "sig"),
        ({"garbage": True}, "malformed"),
    ],
)
def test_as1_invalid_proof_rejected(as_: AS, mutate: dict[str, Any], reason: str) -> None:
    """AS-1: each failed RFC 9449 §4.3 check → 400 invalid_dpop_proof."""
    now = as_.clock.now + mutate.get("iat", 0)
    proof = create_proof(
        as_.key,
        htm=mutate.get("htm", "POST"),
        htu=mutate.get("url", TOKEN_URL),
        now=now,
        allow_insecure_http=True,
    )
    if mutate.get("tamper"):
        proof = proof[:-4] + ("AAAA" if not proof.endswith("AAAA") else "BBBB")
    if mutate.get("garbage"):
        proof = "not-a-jwt"
    resp = as_.token(CC, proof=proof)
    assert error_of(resp) == "invalid_dpop_proof"
    assert resp.status == 400


def test_as1_two_dpop_headers_rejected(as_: AS) -> None:
    """AS-1 / SEC-01: two DPoP fields → invalid_dpop_proof."""
    resp = as_.token(CC, proof=None, headers=[("DPoP", as_.proof()), ("DPoP", as_.proof())])
    assert error_of(resp) == "invalid_dpop_proof"


def test_as1_replayed_proof_rejected(as_: AS) -> None:
    """AS-1 / SEC-71: the same proof twice → the second is invalid_dpop_proof."""
    proof = as_.proof()
    assert as_.token(CC, proof=proof).status == 200
    assert error_of(as_.token(CC, proof=proof)) == "invalid_dpop_proof"


def test_as1_proof_for_par_endpoint_rejected_at_token(as_: AS) -> None:
    """AS-1: a proof minted for /par (htu) is refused at /token."""
    assert error_of(as_.token(CC, proof=as_.proof(url=PAR_URL))) == "invalid_dpop_proof"


# --- AS-2, AS-3, AS-10, AS-27 / X-6, X-7: the issued token ----------------------------------


def test_as2_as3_as10_bound_token_issued(as_: AS) -> None:
    """AS-2/AS-3/AS-10: cnf.jkt = proof key thumbprint, token_type DPoP."""
    resp = as_.token(CC)
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    body = body_of(resp)
    assert body["token_type"] == "DPoP"
    _, claims = jwt_parts(body["access_token"])
    assert claims["cnf"] == {"jkt": as_.key.jkt}


def test_as27_x6_x7_rfc9068_claims(as_: AS) -> None:
    """AS-27, X-6, X-7: typ at+jwt, signed (never none), iss exp aud sub client_id iat jti."""
    body = body_of(as_.token({**CC, "scope": "read"}))
    header, claims = jwt_parts(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert header["kid"] in {k["kid"] for k in as_.service.keyring.jwks(now=as_.clock.now)["keys"]}
    assert {"iss", "exp", "aud", "sub", "client_id", "iat", "jti"} <= set(claims)
    assert claims["iss"] == ISSUER
    assert claims["client_id"] == "conf" == claims["sub"]
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == body["expires_in"]


def test_rfc8707_resource_sets_aud(as_: AS) -> None:
    """RFC 8707: resource → aud; a relative or fragment resource → invalid_target."""
    body = body_of(as_.token({**CC, "resource": "https://api.test/"}))
    assert jwt_parts(body["access_token"])[1]["aud"] == "https://api.test/"
    assert error_of(as_.token({**CC, "resource": "/relative"})) == "invalid_target"
    assert error_of(as_.token({**CC, "resource": "https://api.test/#f"})) == "invalid_target"


def test_as26_default_lifetime_short(as_: AS) -> None:
    """AS-26: the default access-token lifetime is short (≤ 1 h)."""
    assert body_of(as_.token(CC))["expires_in"] <= 3600


# --- AS-9: dpop_bound_access_tokens --------------------------------------------------------


def test_as9_bound_client_without_proof_rejected(as_: AS) -> None:
    """AS-9: a dpop_bound_access_tokens client without DPoP → invalid_dpop_proof, never Bearer."""
    resp = as_.token(CC, client="bound", proof=None)
    assert error_of(resp) == "invalid_dpop_proof"
    assert as_.token(CC, client="bound").status == 200


def test_as9_unflagged_client_without_proof_gets_bearer(as_: AS) -> None:
    """AS-9: an unflagged client without DPoP gets a Bearer token without cnf."""
    body = body_of(as_.token(CC, proof=None))
    assert body["token_type"] == "Bearer"
    assert "cnf" not in jwt_parts(body["access_token"])[1]


# --- AS-12..AS-19: nonces ------------------------------------------------------------------


def test_as12_as15_nonce_required_then_success(as_nonce: AS) -> None:
    """AS-12, AS-15, AS-18: 400 use_dpop_nonce with exactly one DPoP-Nonce; retry succeeds."""
    resp = as_nonce.token(CC)
    assert error_of(resp) == "use_dpop_nonce"
    nonces = [v for k, v in resp.headers if k.lower() == "dpop-nonce"]
    assert len(nonces) == 1
    ok = as_nonce.token(CC, proof=as_nonce.proof(nonce=nonces[0]))
    assert ok.status == 200
    assert ok.header("DPoP-Nonce") is None  # the nonce is current: nothing new to send


def test_as14_stale_nonce_gets_use_dpop_nonce(as_nonce: AS) -> None:
    """AS-14, AS-16: a nonce outside the window → use_dpop_nonce with a new nonce."""
    nonce = as_nonce.service.nonces.issue(now=as_nonce.clock.now - 3600)  # type: ignore[union-attr]
    resp = as_nonce.token(CC, proof=as_nonce.proof(nonce=nonce))
    assert error_of(resp) == "use_dpop_nonce"
    assert resp.header("DPoP-Nonce") not in (None, nonce)


def test_as16_as18_previous_nonce_accepted_with_fresh_one(as_nonce: AS) -> None:
    """AS-16, AS-18: the previous step's nonce is accepted; the 200 carries a fresh nonce."""
    issuer = as_nonce.service.nonces
    assert issuer is not None
    old = issuer.issue(now=as_nonce.clock.now - issuer.step)
    resp = as_nonce.token(CC, proof=as_nonce.proof(nonce=old))
    assert resp.status == 200
    fresh = resp.header("DPoP-Nonce")
    assert fresh is not None
    assert fresh != old
    assert resp.header("Cache-Control") == "no-store"  # AS-19


def test_sec10_nonce_downgrade_rejected(as_nonce: AS) -> None:
    """SEC-10: after a challenge, a proof without nonce still gets use_dpop_nonce."""
    as_nonce.token(CC)
    assert error_of(as_nonce.token(CC)) == "use_dpop_nonce"


def test_as12_per_client_nonce_policy(store: Any, clock: Any) -> None:
    """AS-12: policy per_client asks only clients with dpop_nonce_required."""
    svc = AS(make_service(store, clock, nonce_policy="per_client"), store, clock)
    assert svc.token(CC).status == 200
    resp = svc.token(CC, client="noncey")
    assert error_of(resp) == "use_dpop_nonce"


def test_as13_as17_nonces_unpredictable_and_nqchar(as_nonce: AS) -> None:
    """AS-13, AS-17: nonces differ per step and are 1*NQCHAR."""
    issuer = as_nonce.service.nonces
    assert issuer is not None
    values = {issuer.issue(now=as_nonce.clock.now + i * issuer.step) for i in range(200)}
    assert len(values) == 200
    assert all(all(c not in ' "\\' and 0x21 <= ord(c) <= 0x7E for c in v) for v in values)


def test_as_error_responses_carry_fresh_nonce(as_nonce: AS) -> None:
    """RFC 9449 §8.2: an error response also carries a fresh nonce when the client's is stale."""
    resp = as_nonce.token(
        {"grant_type": "authorization_code", "code": "x", "code_verifier": "y" * 43}
    )
    assert error_of(resp) in {"unauthorized_client", "use_dpop_nonce"}
    assert resp.header("DPoP-Nonce") is not None


# --- client authentication ------------------------------------------------------------------


def test_client_secret_basic_wrong_secret_401(as_: AS) -> None:
    """RFC 6749 §5.2: invalid_client is 401 with a Basic challenge."""
    req = form_request(TOKEN_URL, CC, headers=[("Authorization", basic("conf", "wrong"))])
    resp = as_.service.handle_token(req)
    assert resp.status == 401
    assert error_of(resp) == "invalid_client"
    assert (resp.header("WWW-Authenticate") or "").startswith("Basic")


def test_client_secret_post(as_: AS) -> None:
    """client_secret_post works; a wrong secret is invalid_client (the method matrix,
    strict mode included, is in test_client_auth_methods.py)."""
    ok = as_.service.handle_token(
        form_request(TOKEN_URL, {**CC, "client_id": "post", "client_secret": SECRET})
    )
    assert ok.status == 200
    bad = as_.service.handle_token(
        form_request(TOKEN_URL, {**CC, "client_id": "post", "client_secret": "nope"})
    )
    assert error_of(bad) == "invalid_client"


def test_two_auth_methods_rejected(as_: AS) -> None:
    """RFC 6749 §2.3: one authentication method per request."""
    resp = as_.token({**CC, "client_secret": SECRET})
    assert error_of(resp) == "invalid_request"


def test_unknown_client_and_public_client_credentials(as_: AS) -> None:
    """Unknown client → invalid_client; a public client cannot use client_credentials."""
    resp = as_.service.handle_token(form_request(TOKEN_URL, {**CC, "client_id": "ghost"}))
    assert error_of(resp) == "invalid_client"
    resp = as_.service.handle_token(form_request(TOKEN_URL, {**CC, "client_id": "public"}))
    assert error_of(resp) == "unauthorized_client"


def _jwt_client(as_: AS, key: DPoPKey) -> str:
    as_.store.put_client(
        ClientRecord(
            client_id="jwt",
            token_endpoint_auth_method="private_key_jwt",
            grant_types=("client_credentials",),
            scope="read",
            jwks={"keys": [{**key.public_jwk, "kid": "k1"}]},
        )
    )
    return "jwt"


def _assertion(key: DPoPKey, now: float, **claims: Any) -> str:
    signer = SigningKey("k1", key)
    base = {
        "iss": "jwt",
        "sub": "jwt",
        "aud": TOKEN_URL,
        "jti": claims.pop("jti", "a-1"),
        "iat": int(now),
        "exp": int(now) + 60,
    }
    return signer.sign({**base, **claims}, typ="JWT")


def _jwt_request(as_: AS, assertion: str, proof: str | None) -> Any:
    params = {
        **CC,
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion,
    }
    headers = [("DPoP", proof)] if proof else []
    return as_.service.handle_token(form_request(TOKEN_URL, params, headers=headers))


def test_private_key_jwt_and_assertion_replay(as_: AS) -> None:
    """RFC 7523: a valid assertion authenticates; its jti cannot be replayed."""
    key = DPoPKey.generate("ES256")
    _jwt_client(as_, key)
    assertion = _assertion(key, as_.clock.now)
    assert _jwt_request(as_, assertion, as_.proof()).status == 200
    assert error_of(_jwt_request(as_, assertion, as_.proof())) == "invalid_client"


@pytest.mark.parametrize(
    "claims",
    [{"aud": "https://other.test"}, {"iss": "other"}, {"exp": 1}, {"jti": ""}],
)
def test_private_key_jwt_bad_claims(as_: AS, claims: dict[str, Any]) -> None:
    """RFC 7523 §3: wrong aud/iss, expired, or no jti → invalid_client."""
    key = DPoPKey.generate("ES256")
    _jwt_client(as_, key)
    assert error_of(_jwt_request(as_, _assertion(key, as_.clock.now, **claims), None)) == (
        "invalid_client"
    )


def test_private_key_jwt_other_key_rejected(as_: AS) -> None:
    """RFC 7523: an assertion signed by an unregistered key → invalid_client."""
    _jwt_client(as_, DPoPKey.generate("ES256"))
    assertion = _assertion(DPoPKey.generate("ES256"), as_.clock.now)
    assert error_of(_jwt_request(as_, assertion, None)) == "invalid_client"


def test_sec99_nonce_retry_does_not_burn_assertion_jti(as_nonce: AS) -> None:
    """SEC-99: use_dpop_nonce before the assertion jti is recorded; the retry succeeds."""
    key = DPoPKey.generate("ES256")
    _jwt_client(as_nonce, key)
    assertion = _assertion(key, as_nonce.clock.now)
    first = _jwt_request(as_nonce, assertion, as_nonce.proof())
    assert error_of(first) == "use_dpop_nonce"
    nonce = first.header("DPoP-Nonce")
    assert _jwt_request(as_nonce, assertion, as_nonce.proof(nonce=nonce)).status == 200


# --- request syntax (X-12; RFC 6749 §5.2) ---------------------------------------------------------


def test_x12_request_syntax_errors_are_json(as_: AS) -> None:
    """X-12: unsupported grant, repeated parameter, wrong media type → 400 JSON errors."""
    assert error_of(as_.token({"grant_type": "password"})) == "unsupported_grant_type"
    assert error_of(as_.token({"grant_type": ["client_credentials"] * 2})) == "invalid_request"
    req = RequestView(
        method="POST",
        url=TOKEN_URL,
        headers=Headers(
            [("Content-Type", "application/json"), ("Authorization", basic("conf", SECRET))]
        ),
        body=json.dumps(CC).encode(),
    )
    assert error_of(as_.service.handle_token(req)) == "invalid_request"
    assert error_of(as_.token({})) == "invalid_request"


def test_replay_store_down_fails_closed(as_opaque: AS) -> None:
    """SEC-80: the replay store failing → 503 temporarily_unavailable, no token (opaque
    tokens: each one issued would be a row in the store)."""
    as_ = as_opaque

    class Down:
        def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
            raise ReplayStoreError(Reason.STORE_UNAVAILABLE)

    as_.service.replay = Down()
    resp = as_.token(CC)
    assert resp.status == 503
    assert error_of(resp) == "temporarily_unavailable"
    assert as_.store.count_access_tokens() == 0


# --- authorization code: AS-21, AS-22, X-14, SEC-99 -----------------------------------------


def test_as21_code_with_dpop_jkt_right_key(as_: AS) -> None:
    """AS-21, AS-22: dpop_jkt is stored with the code; the same key redeems it."""
    code, verifier = get_code(as_, dpop_jkt=as_.key.jkt)
    stored = as_.store.get_code(sha256_hex(code))
    assert stored is not None
    assert stored.dpop_jkt == as_.key.jkt
    resp = as_.token(code_params(code, verifier), client=None)
    assert resp.status == 200
    assert jwt_parts(body_of(resp)["access_token"])[1]["cnf"]["jkt"] == as_.key.jkt


def test_as21_sec90_code_other_key_rejected(as_: AS) -> None:
    """AS-21 / SEC-90: proof by another key than dpop_jkt → invalid_grant; code not burnt."""
    code, verifier = get_code(as_, dpop_jkt=as_.key.jkt)
    other = as_.proof(DPoPKey.generate("ES256"))
    assert error_of(as_.token(code_params(code, verifier), client=None, proof=other)) == (
        "invalid_grant"
    )
    assert as_.token(code_params(code, verifier), client=None).status == 200


def test_as21_code_bound_without_proof_rejected(as_: AS) -> None:
    """AS-21: a dpop_jkt-bound code redeemed without DPoP → 400 invalid_dpop_proof."""
    code, verifier = get_code(as_, dpop_jkt=as_.key.jkt)
    resp = as_.token(code_params(code, verifier), client=None, proof=None)
    assert error_of(resp) == "invalid_dpop_proof"


def test_dpop_jkt_not_a_thumbprint_is_invalid_request(as_: AS) -> None:
    """RFC 9449 §10: a dpop_jkt that is not a thumbprint → invalid_request (redirected)."""

    endpoint = AuthorizationEndpoint(as_.service, ConfigUsers(USERS))
    params = authorize_params("public", pkce()[1], dpop_jkt="short")

    resp = endpoint.handle(
        RequestView(method="GET", url=ISSUER + "/authorize?" + urlencode(params))
    )
    assert resp.status == 303
    query = parse_qs(urlsplit(resp.header("Location") or "").query)
    assert query["error"] == ["invalid_request"]
    assert query["iss"] == [ISSUER]


def test_x14_pkce_mismatch_and_malformed(as_: AS) -> None:
    """X-14: wrong verifier → invalid_grant; malformed verifier → invalid_request."""
    code, _ = get_code(as_)
    assert error_of(as_.token(code_params(code, "x" * 43), client=None)) == "invalid_grant"
    assert error_of(as_.token(code_params(code, "short"), client=None)) == "invalid_request"


def test_code_redirect_uri_must_match(as_: AS) -> None:
    """RFC 6749 §4.1.3: redirect_uri must equal the authorization request's."""
    code, verifier = get_code(as_)
    params = {**code_params(code, verifier), "redirect_uri": REDIRECT + "x"}
    assert error_of(as_.token(params, client=None)) == "invalid_grant"


def test_code_single_use_second_use_revokes(as_: AS) -> None:
    """RFC 6749 §4.1.2: a reused code → invalid_grant and the first token is revoked."""
    code, verifier = get_code(as_)
    first = body_of(as_.token(code_params(code, verifier), client=None))
    assert error_of(as_.token(code_params(code, verifier), client=None)) == "invalid_grant"
    assert as_.service.lookup_access_token(first["access_token"], now=as_.clock.now) is None


def test_code_expired(as_: AS) -> None:
    """RFC 6749 §4.1.2: an expired code → invalid_grant."""
    code, verifier = get_code(as_)
    as_.clock.now += 61
    assert error_of(as_.token(code_params(code, verifier), client=None)) == "invalid_grant"


def test_code_other_client_rejected(as_: AS) -> None:
    """RFC 6749 §4.1.3: a code issued to one client cannot be redeemed by another."""
    code, verifier = get_code(as_)
    resp = as_.token({**code_params(code, verifier), "client_id": "conf"}, client="conf")
    assert error_of(resp) == "invalid_grant"


def test_sec99_nonce_retry_keeps_code(as_nonce: AS) -> None:
    """SEC-99: use_dpop_nonce on the token request does not consume the code."""
    code, verifier = get_code(as_nonce, "noncey", dpop_jkt=as_nonce.key.jkt)
    params = {**code_params(code, verifier, "noncey")}
    first = as_nonce.token(params, client="noncey")
    assert error_of(first) == "use_dpop_nonce"
    proof = as_nonce.proof(nonce=first.header("DPoP-Nonce"))
    assert as_nonce.token(params, client="noncey", proof=proof).status == 200


# --- refresh tokens: AS-5, AS-6, AS-7, reuse, SEC-95/96 --------------------------------------


def _public_tokens(as_: AS) -> dict[str, Any]:
    code, verifier = get_code(as_)
    return body_of(as_.token(code_params(code, verifier), client=None))


def _refresh(as_: AS, rt: str, *, client: str | None = None, **kw: Any) -> Any:
    params = {"grant_type": "refresh_token", "refresh_token": rt}
    if client is None:
        params["client_id"] = "public"
    return as_.token(params, client=client, **kw)


def test_as5_public_refresh_token_bound(as_: AS) -> None:
    """AS-5: a public client's refresh token is stored with the proof key."""
    tokens = _public_tokens(as_)
    stored = as_.store.get_refresh(sha256_hex(tokens["refresh_token"]))
    assert stored is not None
    assert stored.jkt == as_.key.jkt


def test_as6_sec95_sec96_public_refresh_needs_same_key(as_: AS) -> None:
    """AS-6 / SEC-95/96: no proof → invalid_dpop_proof; other key → invalid_grant; same → 200."""
    tokens = _public_tokens(as_)
    rt = tokens["refresh_token"]
    assert error_of(_refresh(as_, rt, proof=None)) == "invalid_dpop_proof"
    other = as_.proof(DPoPKey.generate("ES256"))
    assert error_of(_refresh(as_, rt, proof=other)) == "invalid_grant"
    ok = _refresh(as_, rt)
    assert ok.status == 200
    assert jwt_parts(body_of(ok)["access_token"])[1]["cnf"]["jkt"] == as_.key.jkt


def test_as7_confidential_refresh_with_new_key(as_: AS) -> None:
    """AS-7: a confidential client refreshes with a new key; the new AT is bound to it."""
    code, verifier = get_code(as_, "conf")
    tokens = body_of(as_.token(code_params(code, verifier, "conf")))
    new_key = DPoPKey.generate("ES256")
    resp = _refresh(as_, tokens["refresh_token"], client="conf", proof=as_.proof(new_key))
    assert resp.status == 200
    assert jwt_parts(body_of(resp)["access_token"])[1]["cnf"]["jkt"] == new_key.jkt


def test_refresh_rotation_and_reuse_revokes_family(as_: AS) -> None:
    """RFC 9700 §4.14.2: rotation; the old token reused → invalid_grant and the family revoked."""
    tokens = _public_tokens(as_)
    rotated = body_of(_refresh(as_, tokens["refresh_token"]))
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert error_of(_refresh(as_, tokens["refresh_token"])) == "invalid_grant"
    assert error_of(_refresh(as_, rotated["refresh_token"])) == "invalid_grant"
    now = as_.clock.now
    assert as_.service.lookup_access_token(rotated["access_token"], now=now) is None
    assert as_.service.lookup_access_token(tokens["access_token"], now=now) is None


def test_sec99_nonce_retry_keeps_refresh_token(as_nonce: AS) -> None:
    """SEC-99: use_dpop_nonce on refresh does not rotate the refresh token."""
    code, verifier = get_code(as_nonce, "noncey")
    params = code_params(code, verifier, "noncey")
    first = as_nonce.token(params, client="noncey")
    nonce = first.header("DPoP-Nonce")
    tokens = body_of(as_nonce.token(params, client="noncey", proof=as_nonce.proof(nonce=nonce)))
    as_nonce.clock.now += 600  # the nonce went stale
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    retry = as_nonce.token(refresh, client="noncey", proof=as_nonce.proof(nonce=nonce))
    assert error_of(retry) == "use_dpop_nonce"
    proof = as_nonce.proof(nonce=retry.header("DPoP-Nonce"))
    assert as_nonce.token(refresh, client="noncey", proof=proof).status == 200


def test_refresh_scope_narrowing(as_: AS) -> None:
    """RFC 6749 §6: a refresh may narrow the scope, never widen it."""
    tokens = _public_tokens(as_)
    params = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    wide = as_.token({**params, "client_id": "public", "scope": "admin"}, client=None)
    assert error_of(wide) == "invalid_scope"
    narrow = as_.token({**params, "client_id": "public", "scope": "read"}, client=None)
    assert body_of(narrow)["scope"] == "read"


# --- PAR: AS-23..25, X-15 -----------------------------------------------------------------


def _par(
    as_: AS, params: dict[str, str], *, proof: str | None = None, client: str = "public"
) -> Any:
    headers = [("DPoP", proof)] if proof else []
    if client != "public":
        headers.append(("Authorization", basic(client, SECRET)))
    else:
        params = {**params, "client_id": "public"}
    return as_.service.handle_par(form_request(PAR_URL, params, headers=headers))


def _par_params() -> tuple[dict[str, str], str]:

    verifier, challenge = pkce()
    return (
        {
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st-1",
        },
        verifier,
    )


def _code_via_par(as_: AS, request_uri: str) -> str:

    endpoint = AuthorizationEndpoint(as_.service, ConfigUsers(USERS))
    query = urlencode({"client_id": "public", "request_uri": request_uri})
    return code_from(drive_login(endpoint, ISSUER + "/authorize?" + query))


def test_as23_as24_par_dpop_header_binds_code(as_: AS) -> None:
    """AS-23, AS-24: a DPoP header at PAR binds the code; key K redeems, key L does not."""
    params, verifier = _par_params()
    resp = _par(as_, params, proof=as_.proof(url=PAR_URL))
    assert resp.status == 201
    assert resp.header("Cache-Control") == "no-store"
    code = _code_via_par(as_, body_of(resp)["request_uri"])
    other = as_.proof(DPoPKey.generate("ES256"))
    assert error_of(as_.token(code_params(code, verifier), client=None, proof=other)) == (
        "invalid_grant"
    )
    assert as_.token(code_params(code, verifier), client=None).status == 200


def test_as23_par_dpop_jkt_in_body_binds_code(as_: AS) -> None:
    """AS-23: dpop_jkt in the PAR body binds the code as well."""
    params, verifier = _par_params()
    resp = _par(as_, {**params, "dpop_jkt": as_.key.jkt})
    code = _code_via_par(as_, body_of(resp)["request_uri"])
    assert error_of(as_.token(code_params(code, verifier), client=None, proof=None)) == (
        "invalid_dpop_proof"
    )
    assert as_.token(code_params(code, verifier), client=None).status == 200


def test_as25_sec93_par_dpop_jkt_mismatch(as_: AS) -> None:
    """AS-25 / SEC-93: dpop_jkt and the PAR proof naming different keys → 400."""
    params, _ = _par_params()
    other = DPoPKey.generate("ES256").jkt
    resp = _par(as_, {**params, "dpop_jkt": other}, proof=as_.proof(url=PAR_URL))
    assert error_of(resp) == "invalid_request"


def test_par_proof_for_token_endpoint_rejected(as_: AS) -> None:
    """AS-24: the PAR proof's htu must be the PAR endpoint."""
    params, _ = _par_params()
    assert error_of(_par(as_, params, proof=as_.proof())) == "invalid_dpop_proof"


def test_x15_par_rejects_request_uri_and_is_single_use(as_: AS) -> None:
    """X-15: request_uri in PAR → 400; a request_uri works once, expires, is bound to its client."""
    params, _ = _par_params()
    assert error_of(_par(as_, {**params, "request_uri": "urn:x"})) == "invalid_request"
    uri = body_of(_par(as_, params))["request_uri"]
    _code_via_par(as_, uri)

    endpoint = AuthorizationEndpoint(as_.service, ConfigUsers({}))
    again = endpoint.handle(
        RequestView(
            method="GET",
            url=ISSUER + "/authorize?" + urlencode({"client_id": "public", "request_uri": uri}),
        )
    )
    assert again.status == 400
    uri2 = body_of(_par(as_, params))["request_uri"]
    other_client = endpoint.handle(
        RequestView(
            method="GET",
            url=ISSUER + "/authorize?" + urlencode({"client_id": "conf", "request_uri": uri2}),
        )
    )
    assert other_client.status == 400
    uri3 = body_of(_par(as_, params))["request_uri"]
    as_.clock.now += 61
    expired = endpoint.handle(
        RequestView(
            method="GET",
            url=ISSUER + "/authorize?" + urlencode({"client_id": "public", "request_uri": uri3}),
        )
    )
    assert expired.status == 400


def test_par_validates_redirect_uri(as_: AS) -> None:
    """X-15: PAR validates like /authorize: an unregistered redirect_uri → invalid_request."""
    params, _ = _par_params()
    assert (
        error_of(_par(as_, {**params, "redirect_uri": "https://evil.test/"})) == "invalid_request"
    )
    assert error_of(_par(as_, {**params, "code_challenge_method": "plain"})) == "invalid_request"


# --- introspection (AS-11, X-17) and revocation --------------------------------------------


def _introspect(as_: AS, token: str, client: str = "conf") -> Any:
    return as_.service.handle_introspect(
        form_request(
            ISSUER + "/introspect",
            {"token": token},
            headers=[("Authorization", basic(client, SECRET))],
        )
    )


def test_as11_introspection_of_bound_token(as_: AS) -> None:
    """AS-11: cnf.jkt top-level, token_type DPoP, no DPoP header needed."""
    token = body_of(as_.token(CC))["access_token"]
    resp = _introspect(as_, token)
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    body = body_of(resp)
    assert body["active"] is True
    assert body["cnf"] == {"jkt": as_.key.jkt}
    assert body["token_type"] == "DPoP"
    assert body["client_id"] == "conf"


def test_x17_inactive_token_has_only_active_false(as_: AS) -> None:
    """X-17: unknown or expired → {"active": false} and nothing else."""
    assert body_of(_introspect(as_, "garbage")) == {"active": False}
    token = body_of(as_.token(CC))["access_token"]
    as_.clock.now += 301
    assert body_of(_introspect(as_, token)) == {"active": False}


def test_introspection_needs_client_auth(as_: AS) -> None:
    """RFC 7662 §2.1: introspection requires an authenticated (confidential) client."""
    resp = as_.service.handle_introspect(form_request(ISSUER + "/introspect", {"token": "x"}))
    assert error_of(resp) == "invalid_client"
    resp = as_.service.handle_introspect(
        form_request(ISSUER + "/introspect", {"token": "x", "client_id": "public"})
    )
    assert error_of(resp) == "invalid_client"


def test_revocation(as_: AS) -> None:
    """RFC 7009: revoke an access token (own tokens only); 200 for unknown tokens."""
    token = body_of(as_.token(CC))["access_token"]
    other = as_.service.handle_revoke(
        form_request(
            ISSUER + "/revoke",
            {"token": token, "client_id": "post", "client_secret": SECRET},
        )
    )
    assert other.status == 200
    assert body_of(_introspect(as_, token))["active"] is True
    own = as_.service.handle_revoke(
        form_request(
            ISSUER + "/revoke", {"token": token}, headers=[("Authorization", basic("conf", SECRET))]
        )
    )
    assert own.status == 200
    assert body_of(_introspect(as_, token)) == {"active": False}


def test_revoking_refresh_token_revokes_family(as_: AS) -> None:
    """RFC 7009 §2.1: revoking a refresh token revokes its access tokens too."""
    tokens = _public_tokens(as_)
    resp = as_.service.handle_revoke(
        form_request(ISSUER + "/revoke", {"token": tokens["refresh_token"], "client_id": "public"})
    )
    assert resp.status == 200
    assert body_of(_introspect(as_, tokens["access_token"])) == {"active": False}
    assert error_of(_refresh(as_, tokens["refresh_token"])) == "invalid_grant"


# --- metadata (AS-8), keys -------------------------------------------------------------------


def test_as8_metadata_dpop_algs(as_: AS) -> None:
    """AS-8: dpop_signing_alg_values_supported equals the proof allow-list; no none/HS*."""
    meta = as_.service.metadata()
    algs = meta["dpop_signing_alg_values_supported"]
    assert set(algs) == set(as_.service.settings.proof_algorithms)
    assert not any(a == "none" or a.startswith("HS") for a in algs)
    assert meta["issuer"] == ISSUER
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True


def test_signing_key_rotation_keeps_old_tokens_valid(as_: AS) -> None:
    """A new key is published before it signs (RFC 7517 §5); rotated keys stay in JWKS
    until retired, and tokens they signed still introspect."""
    old = body_of(as_.token(CC))["access_token"]
    old_kid = jwt_parts(old)[0]["kid"]
    ring = as_.service.keyring
    new_kid = ring.rotate(now=as_.clock.now).kid
    assert new_kid in {k["kid"] for k in ring.jwks(now=as_.clock.now)["keys"]}  # published
    assert jwt_parts(body_of(as_.token(CC))["access_token"])[0]["kid"] == old_kid
    as_.clock.now += ring.publish_ahead
    new = body_of(as_.token(CC))["access_token"]
    assert jwt_parts(new)[0]["kid"] == new_kid
    kids = {k["kid"] for k in ring.jwks(now=as_.clock.now)["keys"]}
    assert old_kid in kids
    assert body_of(_introspect(as_, old))["active"] is True
    ring.refresh(now=as_.clock.now + 86400 + 1)
    kids = {k["kid"] for k in ring.jwks(now=as_.clock.now + 86401)["keys"]}
    assert old_kid not in kids


def test_signing_keys_persist_across_restarts(as_: AS) -> None:
    """Signing keys are generated once and persisted in the store."""
    first = as_.service.keyring.current(now=as_.clock.now).kid
    again = make_service(as_.store, as_.clock)
    assert again.keyring.current(now=as_.clock.now).kid == first


# --- attack families A-F at the token endpoint (the core is tested exhaustively elsewhere) ---


def _raw_proof(header: dict[str, Any], claims: dict[str, Any], key: DPoPKey) -> str:
    head = b64url_encode(json.dumps(header).encode())
    body = b64url_encode(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url_encode(key.sign(f'{head}.{body}'.encode()))}"


def _claims(now: float, **extra: Any) -> dict[str, Any]:
    return {"jti": "j-" + str(now), "htm": "POST", "htu": TOKEN_URL, "iat": int(now), **extra}


@pytest.mark.parametrize(
    "case",
    ["alg_none", "hs256", "private_jwk", "typ_jwt", "no_jti", "iat_string", "no_jwk", "crit"],
)
def test_families_b_to_f_bad_proofs_at_token(as_opaque: AS, case: str) -> None:
    """Families B-F (SEC-26/28 and kin): each malformed proof → 400 invalid_dpop_proof,
    and no token (opaque tokens: each one issued would be a row in the store)."""
    as_ = as_opaque
    key = as_.key
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk}
    claims = _claims(as_.clock.now)
    if case == "alg_none":
        header["alg"] = "none"
    elif case == "hs256":
        header["alg"] = "HS256"
    elif case == "private_jwk":
        header["jwk"] = key.private_jwk()
    elif case == "typ_jwt":
        header["typ"] = "JWT"
    elif case == "no_jti":
        del claims["jti"]
    elif case == "iat_string":
        claims["iat"] = str(claims["iat"])
    elif case == "no_jwk":
        del header["jwk"]
    elif case == "crit":
        header["crit"] = ["x-unknown"]
        header["x-unknown"] = 1
    resp = as_.token(CC, proof=_raw_proof(header, claims, key))
    assert error_of(resp) == "invalid_dpop_proof"
    assert as_.store.count_access_tokens() == 0


def test_family_a_comma_folded_and_oversized_proofs(as_: AS) -> None:
    """SEC-01/02, SEC-107: a comma-folded DPoP field or a huge proof → rejected."""
    folded = as_.proof() + ", " + as_.proof()
    assert error_of(as_.token(CC, proof=folded)) == "invalid_dpop_proof"
    huge = as_.proof(claims={"pad": "x" * 9000})
    assert error_of(as_.token(CC, proof=huge)) == "invalid_dpop_proof"


def test_family_h_htu_query_and_case_normalised(as_: AS) -> None:
    """V-9 / V-13: htu compared after RFC 3986 normalisation (query dropped, host case)."""
    upper = as_.proof(url="HTTP://AS.TEST/token?x=1")
    assert as_.token(CC, proof=upper).status == 200
    slash = as_.proof(url=TOKEN_URL + "/")
    assert error_of(as_.token(CC, proof=slash)) == "invalid_dpop_proof"


def test_housekeeping_purges_expired_rows(as_opaque: AS) -> None:
    """Expired access tokens are deleted after purge_interval; live ones stay."""
    old = body_of(as_opaque.token(CC))["access_token"]
    as_opaque.clock.now += as_opaque.service.purge_interval + 400
    fresh = body_of(as_opaque.token(CC))["access_token"]
    assert as_opaque.store.count_access_tokens() == 1
    assert as_opaque.service.lookup_access_token(fresh, now=as_opaque.clock.now) is not None
    assert as_opaque.service.lookup_access_token(old, now=as_opaque.clock.now) is None


def test_grant_store_down_fails_closed(clock: Any) -> None:
    """SEC-80 for the grant store: an unreachable database → 503 temporarily_unavailable."""
    from dpopkit.server.service import ServerSettings, TokenService
    from dpopkit.storage.memory import MemoryReplayCache
    from dpopkit.storage.sql import SQLGrantStore

    dead = SQLGrantStore("postgresql://postgres@127.0.0.1:1/none", create=False)
    svc = TokenService(
        ServerSettings(issuer=ISSUER),
        store=dead,
        replay=MemoryReplayCache(single_process=True),
        clock=clock,
    )
    resp = AS(svc, dead, clock).token(CC)
    assert resp.status == 503
    assert error_of(resp) == "temporarily_unavailable"
    assert resp.header("Retry-After") is not None
