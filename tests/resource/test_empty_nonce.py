"""An empty ``nonce`` claim at the resource server: a wrong nonce, never a malformed proof."""

from __future__ import annotations

import secrets

import pytest

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy, access_token_hash, parse_challenges
from dpopkit.core.jws import b64url_encode, json_dumps
from tests.resource._rs_support import NOW, ORIGIN, Build, Issuer, dpop_headers

SECRET = b"r" * 32


def empty_nonce_headers(key: DPoPKey, token: str) -> list[tuple[str, str]]:
    """A proof with ``"nonce": ""`` (create_proof refuses to make one: it is not NQCHAR)."""
    payload = {
        "jti": secrets.token_urlsafe(16),
        "htm": "GET",
        "htu": f"{ORIGIN}/hello",
        "iat": int(NOW),
        "ath": access_token_hash(token),
        "nonce": "",
    }
    signing_input = f"{key.proof_header_b64}.{b64url_encode(json_dumps(payload))}"
    proof = f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"
    return [("Authorization", f"DPoP {token}"), ("DPoP", proof)]


@pytest.mark.parametrize("require_nonce", [True, False])
def test_hd15_empty_nonce_gets_401_use_dpop_nonce(
    build: Build, issuer: Issuer, key: DPoPKey, require_nonce: bool
) -> None:
    """HD-15: ``"nonce": ""`` -> 401 ``use_dpop_nonce`` with a fresh ``DPoP-Nonce``
    (RFC 9449 §9), on every adapter; the client's retry with that nonce succeeds."""
    rs = build(
        nonces=NonceIssuer([SECRET], context="rs"),
        policy=ProofPolicy(require_nonce=require_nonce),
    )
    token = issuer.token(jkt=key.jkt)
    first = rs.request("GET", "/hello", empty_nonce_headers(key, token))
    assert first.status_code == 401
    (challenge,) = [c for c in parse_challenges(first.headers["www-authenticate"])]
    assert challenge.scheme.lower() == "dpop"
    assert challenge.params["error"] == "use_dpop_nonce"
    nonce = first.headers["dpop-nonce"]
    assert nonce
    assert rs.calls.count == 0
    second = rs.request("GET", "/hello", dpop_headers(key, token, nonce=nonce))
    assert second.status_code == 200
    assert rs.calls.count == 1
