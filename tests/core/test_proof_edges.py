"""Edges of proof creation and the verified-header cache not covered elsewhere.

Checklist P-9 (``iat`` from the clock), P-13 (extra claims), and the bounded
key cache of :mod:`dpopkit.core.proof` (no unbounded growth from attacker keys).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from dpopkit import DPoPKey, create_proof, verify_proof
from dpopkit.core import proof as proof_module
from dpopkit.core.jws import b64url_decode, json_dumps, json_loads_object

HTU = "https://server.example.com/token"
KEY = DPoPKey.generate("ES256")


def payload_of(proof: str) -> dict[str, Any]:
    return json_loads_object(b64url_decode(proof.split(".")[1]))


def test_p9_iat_comes_from_the_wall_clock_when_now_is_not_given() -> None:
    before = int(time.time())
    proof = create_proof(KEY, htm="POST", htu=HTU)
    after = int(time.time())
    assert before <= payload_of(proof)["iat"] <= after


def test_create_proof_needs_a_dpop_key() -> None:
    with pytest.raises(TypeError):
        create_proof(KEY.public_jwk, htm="POST", htu=HTU, now=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("nonce", [None, "n-1"])
@pytest.mark.parametrize("access_token", [None, "tok"])
def test_p13_extra_claims_payload_is_the_canonical_json(
    nonce: str | None, access_token: str | None
) -> None:
    now = 1_700_000_000
    proof = create_proof(
        KEY,
        htm="POST",
        htu=HTU,
        nonce=nonce,
        access_token=access_token,
        claims={"client_id": "c1", "n": [1, 2]},
        now=now,
    )
    payload = payload_of(proof)
    assert payload["client_id"] == "c1"
    assert payload["n"] == [1, 2]
    assert ("nonce" in payload) is (nonce is not None)
    assert ("ath" in payload) is (access_token is not None)
    # The encoded payload is exactly the compact JSON of the claims (no spaces, same order).
    assert b64url_decode(proof.split(".")[1]) == json_dumps(payload)
    checked = verify_proof(proof, htm="POST", htu=HTU, access_token=access_token, now=now)
    assert checked.claims["client_id"] == "c1"


def test_payload_without_extra_claims_is_the_canonical_json() -> None:
    # The template used without extra claims yields what json_dumps would.
    for nonce in (None, "n"):
        for token in (None, "t"):
            proof = create_proof(KEY, htm="GET", htu=HTU, nonce=nonce, access_token=token, now=1)
            raw = b64url_decode(proof.split(".")[1])
            assert raw == json_dumps(json_loads_object(raw))


def _facts_for(key: DPoPKey) -> Any:
    proof = create_proof(key, htm="GET", htu=HTU, now=1_700_000_000)
    proof_module._key_cache.clear()
    verify_proof(proof, htm="GET", htu=HTU, now=1_700_000_000)
    facts = proof_module._key_cache.get(key.proof_header_b64)
    assert facts is not None
    return facts


def test_key_cache_is_bounded_oldest_first() -> None:
    cache = proof_module._KeyCache(maxsize=2)
    keys = [DPoPKey.generate("EdDSA") for _ in range(3)]
    facts = [_facts_for(k) for k in keys]
    for key, fact in zip(keys, facts, strict=True):
        cache.put(key.proof_header_b64, fact)
    assert cache.get(keys[0].proof_header_b64) is None
    assert cache.get(keys[1].proof_header_b64) is facts[1]
    assert cache.get(keys[2].proof_header_b64) is facts[2]


def test_key_cache_keeps_the_first_facts_for_a_header() -> None:
    # Two threads may verify the same new header at once: the second put is a no-op.
    cache = proof_module._KeyCache(maxsize=2)
    first, second = _facts_for(KEY), _facts_for(KEY)
    cache.put(KEY.proof_header_b64, first)
    cache.put(KEY.proof_header_b64, second)
    assert cache.get(KEY.proof_header_b64) is first


@pytest.mark.parametrize("member", ["x", "y"])
def test_v5_ec_template_header_with_non_canonical_coordinate_is_bad_jwk(member: str) -> None:
    """A header in DPoPKey's exact EC layout whose coordinate is not canonical base64url
    leaves the template fast path and is refused by the full checks (RFC 9449 §4.3 (5))."""
    from dpopkit import InvalidProofError, Reason
    from dpopkit.core.jws import b64url_encode

    jwk = KEY.public_jwk
    value = jwk[member]
    # 32 octets are 43 characters: the last one carries 2 unused bits, which must be 0.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(value[-1]) | 1]
    jwk[member] = value[:-1] + last
    header = json_dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})
    proof = create_proof(KEY, htm="POST", htu=HTU, now=0)
    forged = b64url_encode(header) + proof[proof.index(".") :]
    proof_module._key_cache.clear()
    with pytest.raises(InvalidProofError) as caught:
        verify_proof(forged, htm="POST", htu=HTU, now=0)
    assert caught.value.reason is Reason.BAD_JWK
