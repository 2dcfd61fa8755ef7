"""An empty ``nonce`` claim at the token endpoint: a wrong nonce, never a malformed proof."""

from __future__ import annotations

import secrets

import pytest

from dpopkit import DPoPKey
from dpopkit.core.jws import b64url_encode, json_dumps
from tests.server.conftest import AS, TOKEN_URL, body_of, error_of, make_service

CC = {"grant_type": "client_credentials"}


def empty_nonce_proof(key: DPoPKey, now: float) -> str:
    """A proof with ``"nonce": ""`` (create_proof refuses to make one: it is not NQCHAR)."""
    payload = {
        "jti": secrets.token_urlsafe(16),
        "htm": "POST",
        "htu": TOKEN_URL,
        "iat": int(now),
        "nonce": "",
    }
    signing_input = f"{key.proof_header_b64}.{b64url_encode(json_dumps(payload))}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


@pytest.mark.parametrize(("policy", "client"), [("always", "conf"), ("per_client", "noncey")])
def test_hd15_empty_nonce_gets_400_use_dpop_nonce(as_: AS, policy: str, client: str) -> None:
    """HD-15: ``"nonce": ""`` at the token endpoint -> 400 ``use_dpop_nonce`` with one fresh
    ``DPoP-Nonce`` (RFC 9449 §8); the retry with that nonce gets its token."""
    server = AS(make_service(as_.store, as_.clock, nonce_policy=policy), as_.store, as_.clock)
    resp = server.token(CC, client=client, proof=empty_nonce_proof(server.key, server.clock.now))
    assert error_of(resp) == "use_dpop_nonce"
    nonces = [v for k, v in resp.headers if k.lower() == "dpop-nonce"]
    assert len(nonces) == 1
    assert nonces[0]
    ok = server.token(CC, client=client, proof=server.proof(nonce=nonces[0]))
    assert ok.status == 200
    assert body_of(ok)["token_type"] == "DPoP"
