"""Proof creation (RFC 9449 §4.2): one test per producer requirement P-1..P-14 of the checklist."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from dpopkit import (
    ALGORITHMS,
    DPoPKey,
    access_token_hash,
    create_proof,
    verify_proof,
)
from dpopkit.core.jws import PRIVATE_JWK_MEMBERS, b64url_decode

VECTORS = Path(__file__).parent.parent / "vectors"
HTU = "https://server.example.com/token"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _decode(proof: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header_b64, payload_b64, signature_b64 = proof.split(".")
    header: dict[str, Any] = json.loads(b64url_decode(header_b64))
    payload: dict[str, Any] = json.loads(b64url_decode(payload_b64))
    return header, payload, b64url_decode(signature_b64)


def test_p1_header_has_typ_alg_jwk_only(any_key: DPoPKey, now: float) -> None:
    """P-1: the JOSE header carries typ, alg and jwk (and nothing that names another key)."""
    header, _, _ = _decode(create_proof(any_key, htm="POST", htu=HTU, now=now))
    assert set(header) == {"typ", "alg", "jwk"}


def test_p2_typ_is_exactly_dpop_jwt(any_key: DPoPKey, now: float) -> None:
    """P-2: producers emit exactly ``dpop+jwt``."""
    header, _, _ = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))
    assert header["typ"] == "dpop+jwt"


def test_p3_alg_is_the_keys_asymmetric_alg(any_key: DPoPKey, now: float) -> None:
    """P-3: ``alg`` is the key's asymmetric algorithm; none and MACs cannot be made."""
    header, _, _ = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))
    assert header["alg"] == any_key.alg
    assert header["alg"] in ALGORITHMS
    assert not any(alg.startswith("HS") or alg.lower() == "none" for alg in ALGORITHMS)


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "ES256K"])
def test_p3_no_key_for_none_or_mac(alg: str) -> None:
    """P-3: no DPoPKey exists for ``none``, HS* or unknown algorithms."""
    with pytest.raises(ValueError, match=r"."):
        DPoPKey.generate(alg)


def test_p4_jwk_is_public_only(any_key: DPoPKey, now: float) -> None:
    """P-4: the header jwk is the public key, without private members, from a private key."""
    assert "d" in any_key.private_jwk()  # the key really holds private material
    header, _, _ = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))
    assert PRIVATE_JWK_MEMBERS.isdisjoint(header["jwk"])
    assert header["jwk"] == any_key.public_jwk


def test_p5_payload_has_required_claims(any_key: DPoPKey, now: float) -> None:
    """P-5: jti, htm, htu and iat are present (and nothing else without token or nonce)."""
    _, payload, _ = _decode(create_proof(any_key, htm="POST", htu=HTU, now=now))
    assert set(payload) == {"jti", "htm", "htu", "iat"}


def test_p6_jti_has_128_random_bits_and_is_unique(now: float) -> None:
    """P-6: each jti decodes to >= 16 random octets; 20 000 proofs give 20 000 jtis."""
    key = DPoPKey.generate("EdDSA")
    jtis = set()
    for _ in range(20_000):
        payload_b64 = create_proof(key, htm="GET", htu=HTU, now=now).split(".")[1]
        jti = json.loads(b64url_decode(payload_b64))["jti"]
        jtis.add(jti)
    assert len(jtis) == 20_000
    for jti in list(jtis)[:100]:
        assert len(b64url_decode(jti)) >= 16


def test_p6_jti_differs_for_identical_requests(any_key: DPoPKey, now: float) -> None:
    """P-6 / C-2: two proofs for the same request at the same instant differ in jti."""
    first = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))[1]["jti"]
    second = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))[1]["jti"]
    assert first != second


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE", "PROPFIND", "patch"])
def test_p7_htm_is_the_method_verbatim(es256_key: DPoPKey, now: float, method: str) -> None:
    """P-7: htm is the request method exactly as given (method tokens are case-sensitive)."""
    _, payload, _ = _decode(create_proof(es256_key, htm=method, htu=HTU, now=now))
    assert payload["htm"] == method


@pytest.mark.parametrize("method", ["", "GET POST", "G\u00c9T", "GET\r\n", "(GET)"])
def test_p7_malformed_method_refused(es256_key: DPoPKey, now: float, method: str) -> None:
    """P-7: a value that is not an RFC 9110 method token is refused."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm=method, htu=HTU, now=now)


@pytest.mark.parametrize(
    ("target", "htu"),
    [
        ("https://rs.example/x?y=1#f", "https://rs.example/x"),
        ("https://rs.example/x?y=1", "https://rs.example/x"),
        ("https://rs.example/x#frag", "https://rs.example/x"),
        ("https://RS.Example:443/a/./b/../x", "https://rs.example/a/x"),
        ("https://rs.example", "https://rs.example/"),
        ("https://rs.example:8443/x/", "https://rs.example:8443/x/"),
    ],
)
def test_p8_htu_drops_query_and_fragment(
    es256_key: DPoPKey, now: float, target: str, htu: str
) -> None:
    """P-8: htu is the target URI without query and fragment (normalised, RFC 3986 §6)."""
    _, payload, _ = _decode(create_proof(es256_key, htm="GET", htu=target, now=now))
    assert payload["htu"] == htu


def test_p8_http_refused_without_insecure_option(es256_key: DPoPKey, now: float) -> None:
    """G-1: ``http://`` is refused unless ``allow_insecure_http`` is set (loopback tests)."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm="GET", htu="http://127.0.0.1:8000/x", now=now)
    proof = create_proof(
        es256_key, htm="GET", htu="http://127.0.0.1:8000/x", now=now, allow_insecure_http=True
    )
    assert _decode(proof)[1]["htu"] == "http://127.0.0.1:8000/x"


@pytest.mark.parametrize("target", ["ftp://rs.example/x", "/relative", "https://u@rs.example/x"])
def test_p8_invalid_target_refused(es256_key: DPoPKey, now: float, target: str) -> None:
    """P-8: a value that can never be a valid htu is refused."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm="GET", htu=target, now=now)


def test_p9_iat_is_the_injected_time_as_integer(any_key: DPoPKey) -> None:
    """P-9: iat is a JSON integer NumericDate from the injected clock."""
    _, payload, _ = _decode(create_proof(any_key, htm="GET", htu=HTU, now=1_700_000_123.9))
    assert payload["iat"] == 1_700_000_123
    assert type(payload["iat"]) is int


def test_p9_non_finite_now_refused(es256_key: DPoPKey) -> None:
    """P-9: the clock must be a finite number."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TypeError, match=r"."):
            create_proof(es256_key, htm="GET", htu=HTU, now=bad)


def test_p10_ath_only_with_an_access_token(any_key: DPoPKey, now: float) -> None:
    """P-10: a resource-request proof carries ath; a token-request proof does not."""
    _, with_token, _ = _decode(
        create_proof(any_key, htm="GET", htu=HTU, access_token="tok", now=now)
    )
    _, without, _ = _decode(create_proof(any_key, htm="GET", htu=HTU, now=now))
    assert "ath" in with_token
    assert "ath" not in without


def test_p11_ath_vector(es256_key: DPoPKey, now: float) -> None:
    """P-11: ath = base64url(SHA-256(token)) for the RFC 9449 example token."""
    vector = _load("rfc9449-access-token-ath.json")
    token = vector["access_token"]
    assert access_token_hash(token) == vector["expected"]["ath"]
    _, payload, _ = _decode(
        create_proof(es256_key, htm="GET", htu=HTU, access_token=token, now=now)
    )
    assert payload["ath"] == vector["expected"]["ath"]
    assert "=" not in payload["ath"]
    assert len(payload["ath"]) == 43


def test_p11_empty_access_token_refused(es256_key: DPoPKey, now: float) -> None:
    """P-11: an empty access token cannot be hashed into ath."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm="GET", htu=HTU, access_token="", now=now)


def test_p12_nonce_echoed_verbatim_fig21(es256_key: DPoPKey) -> None:
    """P-12: the server's DPoP-Nonce is sent verbatim; the payload has Figure 21's shape."""
    nonce = _load("rfc9449-fig20-as-use-dpop-nonce.json")["headers"]["DPoP-Nonce"]
    fig21 = _load("rfc9449-fig21-dpop-proof-payload-with-nonce.json")["payload"]
    proof = create_proof(
        es256_key, htm=fig21["htm"], htu=fig21["htu"], nonce=nonce, now=fig21["iat"]
    )
    _, payload, _ = _decode(proof)
    assert set(payload) == set(fig21)
    assert payload["nonce"] == fig21["nonce"] == nonce
    assert {k: payload[k] for k in ("htm", "htu", "iat")} == {
        k: fig21[k] for k in ("htm", "htu", "iat")
    }


@pytest.mark.parametrize("nonce", ["", "a b", 'a"b', "a\\b", "caf\u00e9", "a\nb"])
def test_p12_nonce_outside_nqchar_refused(es256_key: DPoPKey, now: float, nonce: str) -> None:
    """P-12: a nonce must be 1*NQCHAR (RFC 9449 §8.1)."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm="GET", htu=HTU, nonce=nonce, now=now)


def test_p13_extra_claims_allowed(any_key: DPoPKey, now: float) -> None:
    """P-13: extra claims are carried and the proof still verifies."""
    proof = create_proof(
        any_key, htm="GET", htu=HTU, claims={"foo": "bar", "n": 1, "obj": {"a": [1]}}, now=now
    )
    _, payload, _ = _decode(proof)
    assert payload["foo"] == "bar"
    assert payload["obj"] == {"a": [1]}
    verified = verify_proof(proof, htm="GET", htu=HTU, now=now)
    assert verified.claims["foo"] == "bar"


@pytest.mark.parametrize("name", ["jti", "htm", "htu", "iat", "ath", "nonce"])
def test_p13_reserved_claims_refused(es256_key: DPoPKey, now: float, name: str) -> None:
    """P-13: extra claims may not override jti, htm, htu, iat, ath or nonce."""
    with pytest.raises(ValueError, match=r"."):
        create_proof(es256_key, htm="GET", htu=HTU, claims={name: "x"}, now=now)


@pytest.mark.parametrize(("alg", "size"), [("ES256", 64), ("ES384", 96), ("ES512", 132)])
def test_p14_ecdsa_signature_is_raw_r_s(alg: str, size: int, now: float) -> None:
    """P-14: ECDSA signatures are fixed-length R||S (not DER) and verify as such."""
    key = DPoPKey.generate(alg)
    private = load_pem_private_key(key.to_pem(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    hash_alg = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[alg]
    for _ in range(20):  # short R or S values must still be left-padded to full size
        proof = create_proof(key, htm="GET", htu=HTU, now=now)
        signature = _decode(proof)[2]
        assert len(signature) == size
        r = int.from_bytes(signature[: size // 2], "big")
        s = int.from_bytes(signature[size // 2 :], "big")
        signing_input = proof.rsplit(".", 1)[0].encode()
        private.public_key().verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_alg))


def test_round_trip_every_algorithm(any_key: DPoPKey, now: float) -> None:
    """P-1..P-14 together: what we create, we verify, for every algorithm."""
    proof = create_proof(any_key, htm="DELETE", htu=HTU + "?q=1", access_token="at", now=now)
    verified = verify_proof(proof, htm="DELETE", htu=HTU, access_token="at", now=now)
    assert verified.jkt == any_key.jkt
    assert verified.alg == any_key.alg
    assert verified.htu == HTU


def test_proof_is_ascii_token68(any_key: DPoPKey, now: float) -> None:
    """RFC 9449 Figure 3: the proof fits a header value (token68, no padding)."""
    proof = create_proof(any_key, htm="GET", htu=HTU, nonce="n-1", now=now)
    assert proof.isascii()
    assert "=" not in proof
    assert proof.count(".") == 2
    # standard base64 alphabet characters never appear
    assert "+" not in proof
    assert "/" not in proof
    # every segment decodes with a strict standard decoder too
    for segment in proof.split("."):
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_p6_jti_is_128_bits_base64url(es256_key: DPoPKey, now: float) -> None:
    """P-6: jti is exactly 16 random octets as unpadded base64url (22 characters)."""
    jti = _decode(create_proof(es256_key, htm="GET", htu=HTU, now=now))[1]["jti"]
    assert len(jti) == 22
    assert len(b64url_decode(jti)) == 16
