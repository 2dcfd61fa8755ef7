"""Check a proof signed in a device with dpopkit's verify_proof and with joserfc."""

from __future__ import annotations

import time

import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry

from dpopkit import DPoPKey, create_proof, verify_proof

URL = "https://api.example/items"


class _DPoPRegistry(JWSRegistry):
    max_header_length = 2048  # an RSA JWK in the header is longer than joserfc's default


def check_proof_verifies(key: DPoPKey) -> None:
    """A proof made with ``key`` verifies in dpopkit and, independently, in joserfc."""
    now = time.time()
    proof = create_proof(key, htm="GET", htu=URL, access_token="at-1", now=now)
    verified = verify_proof(
        proof, htm="GET", htu=URL, access_token="at-1", expected_jkt=key.jkt, now=now
    )
    assert verified.jkt == key.jkt
    public = JWKRegistry.import_key(dict(key.public_jwk))
    registry = _DPoPRegistry(algorithms=[key.alg])
    token = jws.deserialize_compact(proof, public, registry=registry)
    assert token.headers()["alg"] == key.alg
    tampered = proof[:-4] + ("AAAA" if not proof.endswith("AAAA") else "BBBB")
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(tampered, public, registry=registry)
