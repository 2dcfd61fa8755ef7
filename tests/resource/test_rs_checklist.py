"""RFC 9449 §6, §7, §9 (RS-1..RS-25) through the ASGI (asyncio, trio) and WSGI adapters."""

from __future__ import annotations

import json

import pytest

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy, create_proof, parse_challenges
from dpopkit.core.challenge import Challenge
from tests.resource._rs_support import NOW, ORIGIN, Build, Clock, Issuer, dpop_headers

SECRET = b"s" * 32


def challenges(response: object) -> list[Challenge]:
    values = response.headers.get_list("www-authenticate")  # type: ignore[attr-defined]
    return parse_challenges(values)


def dpop_challenge(response: object) -> Challenge:
    return next(c for c in challenges(response) if c.is_scheme("DPoP"))


def test_rs3_valid_request_reaches_app_with_principal(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt, scope="read write")
    response = rs.request("GET", "/hello", dpop_headers(key, token))
    assert response.status_code == 200
    assert response.json() == {
        "sub": "alice",
        "client_id": "client-1",
        "scopes": ["read", "write"],
        "jkt": key.jkt,
        "scheme": "DPoP",
    }
    assert rs.calls.count == 1
    assert "dpop-nonce" not in response.headers


def test_rs3_bound_token_without_proof_rejected(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", [("Authorization", f"DPoP {token}")])
    assert response.status_code == 401
    assert dpop_challenge(response).params["error"] == "invalid_dpop_proof"
    assert rs.guard.metrics.snapshot()["rejected"] == {"missing_proof": 1}
    assert rs.calls.count == 0


def test_rs2_proof_key_differs_from_cnf_jkt_is_invalid_token(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """RS-2, Fig. 16 (SEC-61): a proof by another key than cnf.jkt."""
    rs = build()
    other = DPoPKey.generate("ES256")
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(other, token))
    assert response.status_code == 401
    challenge = dpop_challenge(response)
    assert challenge.params["error"] == "invalid_token"
    assert challenge.params["algs"] == ProofPolicy().algs_param
    assert rs.guard.metrics.snapshot()["rejected"] == {"jkt_mismatch": 1}
    assert rs.calls.count == 0


def test_rs5_ath_of_another_token_rejected(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """RS-5 / V-12(a): a proof made for token A sent with token B bound to the same key."""
    rs = build()
    token_a = issuer.token(jkt=key.jkt, scope="a")
    token_b = issuer.token(jkt=key.jkt, scope="b")
    response = rs.request("GET", "/hello", dpop_headers(key, token_b, ath_token=token_a))
    assert response.status_code == 401
    assert dpop_challenge(response).params["error"] == "invalid_dpop_proof"
    assert rs.guard.metrics.snapshot()["rejected"] == {"ath_mismatch": 1}


@pytest.mark.parametrize("scheme", ["dpop", "DPOP", "DpOp", "DPoP  ", "DPoP   "])
def test_rs6_scheme_is_case_insensitive_and_spaces_allowed(
    build: Build, issuer: Issuer, key: DPoPKey, scheme: str
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(key, token, scheme=scheme))
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["DPoP", "DPoP ", "DPoP a b", "DPoP\ttoken", "DPoP to ken"])
def test_rs6_malformed_authorization_is_invalid_request(build: Build, value: str) -> None:
    rs = build()
    response = rs.request("GET", "/hello", [("Authorization", value)])
    assert response.status_code == 400
    assert dpop_challenge(response).params["error"] == "invalid_request"
    assert rs.calls.count == 0


def test_rs7_no_credentials_challenge_without_error(build: Build) -> None:
    """RS-7, Fig. 15: a DPoP challenge with algs and no error information."""
    rs = build()
    response = rs.request("GET", "/hello")
    assert response.status_code == 401
    (challenge,) = challenges(response)
    assert challenge.is_scheme("DPoP")
    assert "error" not in challenge.params
    assert challenge.params["algs"] == ProofPolicy().algs_param
    assert rs.calls.count == 0


def test_rs8_realm_and_rs12_algs_follow_configuration(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    rs = build(realm="api", policy=ProofPolicy(algorithms=frozenset({"ES256", "PS256"})))
    response = rs.request(
        "GET", "/hello", dpop_headers(DPoPKey.generate("ES256"), issuer.token(jkt=key.jkt))
    )
    challenge = dpop_challenge(response)
    assert challenge.params["realm"] == "api"
    assert challenge.params["algs"] == "ES256 PS256"


def test_rs9_missing_scope_is_403_insufficient_scope(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    rs = build(required_scopes=["write"])
    token = issuer.token(jkt=key.jkt, scope="read")
    response = rs.request("GET", "/hello", dpop_headers(key, token))
    assert response.status_code == 403
    challenge = dpop_challenge(response)
    assert challenge.params["error"] == "insufficient_scope"
    assert challenge.params["scope"] == "write"
    assert rs.calls.count == 0


def test_rs9_scope_failure_does_not_burn_the_proof(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """The replay record comes last: a 403 leaves the jti unrecorded (route scopes per path)."""
    rs = build(route_scopes={"/admin": ["admin"]})
    token = issuer.token(jkt=key.jkt, scope="read")
    headers = dpop_headers(key, token, url=f"{ORIGIN}/admin")
    assert rs.request("GET", "/admin", headers).status_code == 403
    assert rs.request("GET", "/hello", dpop_headers(key, token)).status_code == 200


def test_rs10_error_parameter_present_when_token_fails(
    build: Build, issuer: Issuer, key: DPoPKey, clock: Clock
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt, lifetime=10)
    clock.now = NOW + 100
    response = rs.request("GET", "/hello", dpop_headers(key, token, now=clock.now))
    assert response.status_code == 401
    assert dpop_challenge(response).params["error"] == "invalid_token"
    assert rs.guard.metrics.snapshot()["rejected"] == {"token_expired": 1}


def test_rs14_never_proxy_authenticate(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build()
    for headers in ([], dpop_headers(DPoPKey.generate("ES256"), issuer.token(jkt=key.jkt))):
        response = rs.request("GET", "/hello", headers)
        assert "proxy-authenticate" not in response.headers


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_rs16_bound_token_as_bearer_rejected(
    build: Build, issuer: Issuer, key: DPoPKey, scheme: str
) -> None:
    """RS-16 (SEC-05): a cnf.jkt-bound token sent as Bearer, with a valid DPoP header too."""
    with pytest.warns(UserWarning, match="accept_bearer"):
        rs = build(accept_bearer=True)
    token = issuer.token(jkt=key.jkt)
    headers = dpop_headers(key, token, scheme=scheme)
    response = rs.request("GET", "/hello", headers)
    assert response.status_code == 401
    bearer, dpop = challenges(response)
    assert bearer.is_scheme("Bearer")
    assert bearer.params["error"] == "invalid_token"
    assert "error" not in dpop.params  # RS-19: only the attempted scheme carries the error
    assert rs.guard.metrics.snapshot()["rejected"] == {"bound_token_as_bearer": 1}
    assert rs.calls.count == 0


def test_rs16_bearer_refused_when_not_configured(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """Bearer not accepted: any Bearer token is invalid_token on the DPoP challenge, which
    says the DPoP scheme is required (RFC 6750 §3.1; HD-16)."""
    rs = build()
    for token in (issuer.token(jkt=key.jkt), issuer.token()):
        response = rs.request("GET", "/hello", dpop_headers(key, token, scheme="Bearer"))
        assert response.status_code == 401
        (challenge,) = challenges(response)
        assert challenge.is_scheme("DPoP")
        assert challenge.params["error"] == "invalid_token"
    assert rs.guard.metrics.snapshot()["rejected"] == {"dpop_required": 2}
    assert rs.calls.count == 0


def test_rs16_token_in_query_refused(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", f"/hello?access_token={token}")
    assert response.status_code == 401
    assert rs.calls.count == 0


def test_rs16_unbound_bearer_accepted_when_configured(build: Build, issuer: Issuer) -> None:
    with pytest.warns(UserWarning, match="accept_bearer"):
        rs = build(accept_bearer=True)
    response = rs.request("GET", "/hello", [("Authorization", f"Bearer {issuer.token()}")])
    assert response.status_code == 200
    assert response.json()["scheme"] == "Bearer"
    assert response.json()["jkt"] is None


def test_rs17_rs18_both_schemes_advertised_without_error(build: Build) -> None:
    """Fig. 17: Bearer and DPoP challenges, neither with error, when no credentials were sent."""
    with pytest.warns(UserWarning, match="accept_bearer"):
        rs = build(accept_bearer=True)
    response = rs.request("GET", "/hello")
    assert response.status_code == 401
    bearer, dpop = challenges(response)
    assert bearer.is_scheme("Bearer")
    assert dpop.is_scheme("DPoP")
    assert "error" not in bearer.params
    assert "error" not in dpop.params
    assert dpop.params["algs"]


def test_rs19_dpop_failure_error_only_on_dpop_challenge(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    with pytest.warns(UserWarning, match="accept_bearer"):
        rs = build(accept_bearer=True)
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(DPoPKey.generate("ES256"), token))
    bearer, dpop = challenges(response)
    assert "error" not in bearer.params
    assert dpop.params["error"] == "invalid_token"


def test_rs20_rs21_two_authorization_fields_400_both_challenges(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """Fig. 19: two Authorization fields -> 400 invalid_request on both challenges."""
    with pytest.warns(UserWarning, match="accept_bearer"):
        rs = build(accept_bearer=True)
    token = issuer.token(jkt=key.jkt)
    headers = [*dpop_headers(key, token), ("Authorization", f"Bearer {token}")]
    if rs.kind == "wsgi":
        # httpx's WSGITransport keeps only the last field; a real server folds them.
        headers = [("Authorization", f"DPoP {token}, Bearer {token}"), headers[1]]
    response = rs.request("GET", "/hello", headers)
    assert response.status_code == 400
    bearer, dpop = challenges(response)
    assert bearer.params["error"] == "invalid_request"
    assert dpop.params["error"] == "invalid_request"
    assert rs.guard.metrics.snapshot()["rejected"] == {"multiple_authorization": 1}
    assert rs.calls.count == 0


def test_rs21_header_and_query_token_is_invalid_request(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    rs = build()
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", f"/hello?access_token={token}", dpop_headers(key, token))
    assert response.status_code == 400
    assert dpop_challenge(response).params["error"] == "invalid_request"


def test_rs22_nonce_required_then_success(
    build: Build, issuer: Issuer, key: DPoPKey, clock: Clock
) -> None:
    """RS-22, Fig. 24: 401 use_dpop_nonce with DPoP-Nonce; the retry with it succeeds."""
    nonces = NonceIssuer([SECRET], context="rs")
    rs = build(nonces=nonces, policy=ProofPolicy(require_nonce=True))
    token = issuer.token(jkt=key.jkt)
    first = rs.request("GET", "/hello", dpop_headers(key, token))
    assert first.status_code == 401
    assert dpop_challenge(first).params["error"] == "use_dpop_nonce"
    nonce = first.headers["dpop-nonce"]
    assert len(first.headers.get_list("dpop-nonce")) == 1  # AS-15
    assert first.headers["cache-control"] == "no-store"  # AS-19
    second = rs.request("GET", "/hello", dpop_headers(key, token, nonce=nonce))
    assert second.status_code == 200
    assert "dpop-nonce" not in second.headers  # the client's nonce is current
    assert rs.calls.count == 1


def test_rs22_stale_nonce_gets_fresh_nonce_on_success(
    build: Build, issuer: Issuer, key: DPoPKey, clock: Clock
) -> None:
    """RS-22 / AS-18: a still-accepted older nonce -> 200 with a fresh DPoP-Nonce."""
    nonces = NonceIssuer([SECRET], context="rs", step=60, accept_past_steps=2)
    rs = build(nonces=nonces, policy=ProofPolicy(require_nonce=True))
    old = nonces.issue(now=NOW)
    clock.now = NOW + 70
    token = issuer.token(jkt=key.jkt, now=clock.now)
    response = rs.request("GET", "/hello", dpop_headers(key, token, nonce=old, now=clock.now))
    assert response.status_code == 200
    assert response.headers["dpop-nonce"] == nonces.issue(now=clock.now)
    assert response.headers["cache-control"] == "no-store"  # AS-19 / RS-22


def test_rs22_missing_nonce_after_challenge_is_refused(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """SEC-10: nonce downgrade -- a proof without nonce is refused when nonces are required."""
    rs = build(nonces=NonceIssuer([SECRET], context="rs"), policy=ProofPolicy(require_nonce=True))
    token = issuer.token(jkt=key.jkt)
    for _ in range(2):
        response = rs.request("GET", "/hello", dpop_headers(key, token))
        assert dpop_challenge(response).params["error"] == "use_dpop_nonce"
    assert rs.calls.count == 0


def test_rs23_as_nonce_not_accepted_at_rs(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    rs = build(nonces=NonceIssuer([SECRET], context="rs"), policy=ProofPolicy(require_nonce=True))
    as_nonce = NonceIssuer([SECRET], context="as").issue(now=NOW)
    token = issuer.token(jkt=key.jkt)
    response = rs.request("GET", "/hello", dpop_headers(key, token, nonce=as_nonce))
    assert response.status_code == 401
    assert dpop_challenge(response).params["error"] == "use_dpop_nonce"
    assert rs.guard.metrics.snapshot()["rejected"] == {"nonce_mismatch": 1}


def test_rs25_unbound_token_with_dpop_scheme_is_invalid_token(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    rs = build()
    token = issuer.token()  # no cnf
    response = rs.request("GET", "/hello", dpop_headers(key, token))
    assert response.status_code == 401
    assert dpop_challenge(response).params["error"] == "invalid_token"
    assert rs.guard.metrics.snapshot()["rejected"] == {"unbound_token_as_dpop": 1}
    assert rs.calls.count == 0


def test_rs1_token_source_reports_binding(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """RS-1: the validator tells bound from unbound; the principal shows the jkt."""
    rs = build()
    response = rs.request("GET", "/hello", dpop_headers(key, issuer.token(jkt=key.jkt)))
    assert response.json()["jkt"] == key.jkt


def test_rs4_nothing_granted_unless_every_check_passed(
    build: Build, issuer: Issuer, key: DPoPKey, clock: Clock
) -> None:
    """RS-4: one mutation at a time (OIDF negative-test style); the handler never runs."""
    rs = build()
    token = issuer.token(jkt=key.jkt)
    good = dpop_headers(key, token)
    proof = good[1][1]
    cases = [
        [good[0]],  # no proof
        [good[0], ("DPoP", proof + "x")],  # bad signature
        [good[0], ("DPoP", proof[:-3])],  # truncated
        [good[0], ("DPoP", "a.b")],  # not a JWS
        dpop_headers(key, token, method="POST"),  # htm
        dpop_headers(key, token, url=f"{ORIGIN}/other"),  # htu
        dpop_headers(key, token, url="https://evil.example/hello"),  # htu host
        dpop_headers(key, token, now=NOW - 3600),  # iat
        dpop_headers(key, token, now=NOW + 3600),  # iat future
        [("Authorization", f"DPoP {token}x"), good[1]],  # token altered
    ]
    for headers in cases:
        response = rs.request("GET", "/hello", headers)
        assert response.status_code == 401, headers
    assert rs.calls.count == 0
    assert rs.request("GET", "/hello", good).status_code == 200


def test_error_responses_never_echo_token_or_proof(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """RFC 6750 §3, RS-11: no token, proof or expected value in the answer."""
    rs = build()
    token = issuer.token(jkt=key.jkt)
    headers = dpop_headers(key, token, url=f"{ORIGIN}/elsewhere")
    response = rs.request("GET", "/hello", headers)
    assert response.status_code == 401
    blob = response.text + json.dumps(dict(response.headers))
    assert token not in blob
    assert headers[1][1] not in blob
    assert "elsewhere" not in blob
    assert response.json()["error"] == "invalid_dpop_proof"


def test_proof_made_with_other_proof_library_is_accepted(build: Build, issuer: Issuer) -> None:
    """Interop: a proof signed by joserfc passes the guard."""
    from joserfc import jwt
    from joserfc.jwk import ECKey

    jose_key = ECKey.generate_key("P-256")
    public = jose_key.as_dict(private=False)
    from dpopkit import jwk_thumbprint
    from dpopkit.core.thumbprint import access_token_hash

    rs = build()
    token = issuer.token(jkt=jwk_thumbprint(public))
    proof = jwt.encode(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": public},
        {
            "jti": "j-1",
            "htm": "GET",
            "htu": f"{ORIGIN}/hello",
            "iat": int(NOW),
            "ath": access_token_hash(token),
        },
        jose_key,
    )
    response = rs.request("GET", "/hello", [("Authorization", f"DPoP {token}"), ("DPoP", proof)])
    assert response.status_code == 200


def test_proof_for_rfc_example_names(build: Build, issuer: Issuer, key: DPoPKey) -> None:
    """G-4: the DPoP header name is case-insensitive (dpop, DPOP)."""
    rs = build()
    token = issuer.token(jkt=key.jkt)
    for name in ("dpop", "DPOP"):
        proof = create_proof(key, htm="GET", htu=f"{ORIGIN}/hello", access_token=token, now=NOW)
        response = rs.request("GET", "/hello", [("Authorization", f"DPoP {token}"), (name, proof)])
        assert response.status_code == 200


def test_rs11_error_description_within_rfc6750_charset(
    build: Build, issuer: Issuer, key: DPoPKey
) -> None:
    """RS-11 / X-9: error_description present, only %x20-21 / %x23-5B / %x5D-7E."""
    import re

    rs = build()
    token = issuer.token(jkt=key.jkt)
    for headers in (
        dpop_headers(DPoPKey.generate("ES256"), token),
        dpop_headers(key, token, url=f"{ORIGIN}/x"),
        [("Authorization", "DPoP")],
    ):
        params = dpop_challenge(rs.request("GET", "/hello", headers)).params
        assert re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]+", params["error_description"])
