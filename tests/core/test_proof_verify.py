"""Proof verification (RFC 9449 §4.3): one test per check V-1..V-14, the RFC example proofs,
freshness boundaries, server nonces, replay keys and expiry, and the header key cache."""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dpopkit import (
    DPoPKey,
    Headers,
    InvalidProofError,
    NonceIssuer,
    ProofPolicy,
    Reason,
    UseNonceError,
    VerifiedProof,
    access_token_hash,
    create_proof,
    extract_proof,
    jwk_thumbprint,
    record_proof,
    verify_proof,
)
from dpopkit.core import proof as proof_module
from dpopkit.core.jws import b64url_decode, b64url_encode, json_dumps
from dpopkit.storage.memory import MemoryReplayCache

VECTORS = Path(__file__).parent.parent / "vectors"
HTU = "https://server.example.com/token"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
SECRET = b"s" * 32


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _segments(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header_b64, payload_b64, _ = proof.split(".")
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))


def sign(key: DPoPKey, payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """Sign arbitrary claims (and optionally an arbitrary header) with ``key``."""
    header_b64 = key.proof_header_b64 if header is None else b64url_encode(json_dumps(header))
    signing_input = f"{header_b64}.{b64url_encode(json_dumps(payload))}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def claims(now: float, **changes: Any) -> dict[str, Any]:
    """Default valid claims for ``POST HTU``; a value of None deletes the claim."""
    payload: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": "POST",
        "htu": HTU,
        "iat": int(now),
    }
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def header_of(key: DPoPKey, **changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.public_jwk}
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return header


def flip_signature_bit(proof: str) -> str:
    head, sig = proof.rsplit(".", 1)
    raw = bytearray(b64url_decode(sig))
    raw[3] ^= 0x01
    return f"{head}.{b64url_encode(bytes(raw))}"


def reject(reason: Reason, proof: str, **kwargs: Any) -> InvalidProofError:
    kwargs.setdefault("htm", "POST")
    kwargs.setdefault("htu", HTU)
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, **kwargs)
    assert info.value.reason == reason
    return info.value


# --- RFC 9449 example proofs ------------------------------------------------------------

RFC_PROOFS = [
    "rfc9449-fig02-dpop-proof-token-request.json",
    "rfc9449-fig07-dpop-proof-refresh-request.json",
    "rfc9449-fig13-dpop-proof-resource-request.json",
]


def _rfc_request(vector: dict[str, Any]) -> dict[str, Any]:
    req = vector["http_request"]
    _, payload = _segments(vector["compact"])
    kwargs: dict[str, Any] = {
        "htm": req["method"],
        "htu": f"{req['assumed_scheme']}://{req['host']}{req['target']}",
        "now": float(payload["iat"]),
    }
    if "access_token" in vector:
        kwargs["access_token"] = vector["access_token"]
    return kwargs


@pytest.mark.parametrize("name", RFC_PROOFS)
def test_v6_rfc_example_proofs_verify(name: str) -> None:
    """V-6: the RFC's proofs (Figures 2, 7, 13) verify with the clock pinned to their iat."""
    vector = _load(name)
    kwargs = _rfc_request(vector)
    verified = verify_proof(vector["compact"], **kwargs)
    _, payload = _segments(vector["compact"])
    assert verified.jkt == vector["expected"]["jkt"] == RFC_JKT
    assert verified.alg == "ES256"
    assert verified.jti == payload["jti"]
    assert verified.iat == payload["iat"]
    assert verified.htm == kwargs["htm"]
    assert verified.htu == kwargs["htu"]
    assert verified.ath == vector["expected"].get("ath")
    # Also with the RFC 7638 thumbprint as the bound key (expected_jkt).
    verify_proof(vector["compact"], expected_jkt=RFC_JKT, **kwargs)


def test_v12_rfc_fig13_ath_matches_ath_vector() -> None:
    """V-12: the Figure 13 proof's ath is the hash of the Figure 6 access token."""
    vector = _load("rfc9449-fig13-dpop-proof-resource-request.json")
    ath = _load("rfc9449-access-token-ath.json")
    verified = verify_proof(vector["compact"], **_rfc_request(vector))
    assert verified.ath == ath["expected"]["ath"]
    assert ath["access_token"] == vector["access_token"]


def _replace_payload(proof: str, **changes: Any) -> str:
    header_b64, payload_b64, sig = proof.split(".")
    payload = json.loads(b64url_decode(payload_b64))
    payload.update(changes)
    return f"{header_b64}.{b64url_encode(json_dumps(payload))}.{sig}"


def _replace_header(proof: str, **changes: Any) -> str:
    header_b64, payload_b64, sig = proof.split(".")
    header = json.loads(b64url_decode(header_b64))
    header.update(changes)
    return f"{b64url_encode(json_dumps(header))}.{payload_b64}.{sig}"


Mutation = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]


def _private_d(proof: str) -> str:
    return _replace_header(proof, jwk={**_segments(proof)[0]["jwk"], "d": "AQAB"})


RFC_MUTATIONS: list[tuple[str, Mutation, Reason | None]] = [
    ("flip-signature-bit", lambda p, k: (flip_signature_bit(p), k), Reason.BAD_SIGNATURE),
    ("drop-signature-char", lambda p, k: (p[:-1], k), Reason.MALFORMED),
    (
        "payload-htm-changed",
        lambda p, k: (_replace_payload(p, htm="PATCH"), {**k, "htm": "PATCH"}),
        Reason.BAD_SIGNATURE,
    ),
    (
        "payload-iat-changed",
        lambda p, k: (_replace_payload(p, iat=int(k["now"]) + 1), k),
        Reason.BAD_SIGNATURE,
    ),
    (
        "header-typ-respelled",
        lambda p, k: (_replace_header(p, typ="application/dpop+jwt"), k),
        Reason.BAD_SIGNATURE,
    ),
    ("header-private-d", lambda p, k: (_private_d(p), k), Reason.PRIVATE_JWK),
    ("request-method", lambda p, k: (p, {**k, "htm": "PUT"}), Reason.HTM_MISMATCH),
    ("request-uri", lambda p, k: (p, {**k, "htu": k["htu"] + "/x"}), Reason.HTU_MISMATCH),
    ("too-old", lambda p, k: (p, {**k, "now": k["now"] + 61}), Reason.IAT_TOO_OLD),
    ("too-new", lambda p, k: (p, {**k, "now": k["now"] - 6}), Reason.IAT_IN_FUTURE),
    (
        "other-bound-key",
        lambda p, k: (p, {**k, "expected_jkt": RFC_JKT[:-1] + "A"}),
        Reason.JKT_MISMATCH,
    ),
    ("other-token", lambda p, k: (p, {**k, "access_token": "other-token"}), None),
]


@pytest.mark.parametrize("name", RFC_PROOFS)
@pytest.mark.parametrize(
    ("mutation", "change", "reason"), RFC_MUTATIONS, ids=[m[0] for m in RFC_MUTATIONS]
)
def test_v6_rfc_example_proofs_mutated_rejected(
    name: str,
    mutation: str,
    change: Mutation,
    reason: Reason | None,
) -> None:
    """V-6/V-8/V-9/V-11/V-12: each single mutation of an RFC proof is refused with its reason."""
    vector = _load(name)
    proof, kwargs = change(vector["compact"], _rfc_request(vector))
    if reason is None:  # another access token: ath missing (fig02/07) or wrong (fig13)
        reason = Reason.ATH_MISMATCH if "ath" in _segments(proof)[1] else Reason.MISSING_CLAIM
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, **kwargs)
    assert info.value.reason == reason
    assert info.value.error == "invalid_dpop_proof"


def test_rfc_fig13_proof_at_token_endpoint_accepted() -> None:
    """V-12: without a presented token, a proof's ath is not checked (token endpoint)."""
    vector = _load("rfc9449-fig13-dpop-proof-resource-request.json")
    kwargs = _rfc_request(vector)
    del kwargs["access_token"]
    assert verify_proof(vector["compact"], **kwargs).ath == vector["expected"]["ath"]


# --- V-1: one DPoP header ------------------------------------------------------------------


def test_v1_single_dpop_header_extracted(es256_key: DPoPKey, now: float) -> None:
    """V-1: exactly one DPoP field is extracted as it is (name case-insensitive)."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    for name in ("DPoP", "dpop", "DPOP"):
        assert extract_proof(Headers([(name, proof), ("Authorization", "DPoP x")])) == proof


def test_v1_two_dpop_headers_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-1 (SEC-01): two DPoP fields, even with different proofs, are refused."""
    first = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    second = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    with pytest.raises(InvalidProofError) as info:
        extract_proof(Headers([("DPoP", first), ("dpop", second)]))
    assert info.value.reason == Reason.MULTIPLE_PROOFS


@pytest.mark.parametrize("separator", [",", ", ", " ,", ",\t"])
def test_v1_comma_folded_value_rejected(es256_key: DPoPKey, now: float, separator: str) -> None:
    """V-1 (SEC-02): a value folded from two fields (WSGI/CGI joins with a comma) is refused."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    with pytest.raises(InvalidProofError) as info:
        extract_proof(Headers([("DPoP", proof + separator + proof)]))
    assert info.value.reason == Reason.MULTIPLE_PROOFS


def test_v1_missing_header_rejected() -> None:
    """§4.3 (1): no DPoP field at all → MISSING_PROOF (400 at the AS, 401 at the RS)."""
    with pytest.raises(InvalidProofError) as info:
        extract_proof(Headers([("Authorization", "DPoP token")]))
    assert info.value.reason == Reason.MISSING_PROOF
    assert info.value.as_response(role="as").status == 400
    assert info.value.as_response(role="rs").status == 401


# --- V-2: one well-formed JWS --------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        "{h}.{p}",
        "{h}.{p}.{s}.{s}",
        "{h}.{p}.{s}.{p}.{s}",
        "{h}.{p}.",
        "{h}=.{p}.{s}",
        "{h}.{p}.{s}==",
    ],
)
def test_v2_not_a_compact_jws_rejected(es256_key: DPoPKey, now: float, shape: str) -> None:
    """V-2: a.b, a.b.c.d, JWE (5 parts), empty parts and padded base64url are refused."""
    h, p, s = create_proof(es256_key, htm="POST", htu=HTU, now=now).split(".")
    reject(Reason.MALFORMED, shape.format(h=h, p=p, s=s), now=now)


def test_v2_non_json_header_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-2: a header that is not JSON is refused."""
    _, p, s = create_proof(es256_key, htm="POST", htu=HTU, now=now).split(".")
    reject(Reason.MALFORMED, f"{b64url_encode(b'not json')}.{p}.{s}", now=now)


def test_v2_lenient_base64_alphabet_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-2: '+' and '/' (which lenient decoders accept or drop) are refused."""
    h, p, s = create_proof(es256_key, htm="POST", htu=HTU, now=now).split(".")
    std = s.replace("-", "+").replace("_", "/")
    if std == s:  # make sure the standard alphabet appears
        std = "+" + s[1:]
    reject(Reason.MALFORMED, f"{h}.{p}.{std}", now=now)


# --- V-3: required claims ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jti", "htm", "htu", "iat"])
def test_v3_each_required_claim_missing_rejected(es256_key: DPoPKey, now: float, name: str) -> None:
    """V-3: removing any of jti, htm, htu, iat → MISSING_CLAIM."""
    error = reject(Reason.MISSING_CLAIM, sign(es256_key, claims(now, **{name: None})), now=now)
    assert error.detail["claim"] == name


def test_v3_ath_required_with_access_token(es256_key: DPoPKey, now: float) -> None:
    """V-3: with an access token, ath is required."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    reject(Reason.MISSING_CLAIM, proof, access_token=TOKEN, now=now)


def test_v3_nonce_required_after_server_supplied_one(es256_key: DPoPKey, now: float) -> None:
    """V-3/V-10: a server requiring nonces refuses a proof without one (use_dpop_nonce)."""
    issuer = NonceIssuer([SECRET])
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    with pytest.raises(UseNonceError) as info:
        verify_proof(
            proof,
            htm="POST",
            htu=HTU,
            policy=ProofPolicy(require_nonce=True),
            nonce_check=issuer,
            now=now,
        )
    assert info.value.reason == Reason.NONCE_REQUIRED


# --- V-4: typ ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ", ["dpop+jwt", "application/dpop+jwt", "DPOP+JWT", "Application/DPoP+JWT"]
)
def test_v4_typ_accepted(es256_key: DPoPKey, now: float, typ: str) -> None:
    """V-4: dpop+jwt, with the optional application/ prefix, case-insensitive (RFC 7515 §4.1.9)."""
    proof = sign(es256_key, claims(now), header_of(es256_key, typ=typ))
    assert verify_proof(proof, htm="POST", htu=HTU, now=now).jkt == es256_key.jkt


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", None, "", "jwt+dpop", "dpop+jwt;x=1", 1])
def test_v4_typ_rejected(es256_key: DPoPKey, now: float, typ: object) -> None:
    """V-4: missing, JWT, at+jwt and other types → BAD_TYP."""
    reject(Reason.BAD_TYP, sign(es256_key, claims(now), header_of(es256_key, typ=typ)), now=now)


# --- V-5: alg ------------------------------------------------------------------------------


def test_v5_alg_none_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-5: alg none."""
    reject(
        Reason.UNSUPPORTED_ALG,
        sign(es256_key, claims(now), header_of(es256_key, alg="none")),
        now=now,
    )


def test_v5_hs256_with_oct_jwk_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-5: HS256 with a symmetric kty=oct jwk."""
    header = header_of(es256_key, alg="HS256", jwk={"kty": "oct", "k": "c2VjcmV0"})
    reject(Reason.UNSUPPORTED_ALG, sign(es256_key, claims(now), header), now=now)


def test_v5_alg_outside_policy_rejected(any_key: DPoPKey, now: float) -> None:
    """V-5: an alg the policy does not allow (here: all but the key's own)."""
    others = frozenset(a for a in ProofPolicy().algorithms if a != any_key.alg)
    proof = create_proof(any_key, htm="POST", htu=HTU, now=now)
    error = reject(Reason.UNSUPPORTED_ALG, proof, policy=ProofPolicy(algorithms=others), now=now)
    assert error.as_response(role="rs").header("WWW-Authenticate") is not None


def test_v5_es256_with_p384_key_rejected(now: float) -> None:
    """V-5: the jwk must fit alg: ES256 with a P-384 key."""
    key = DPoPKey.generate("ES384")
    reject(Reason.BAD_JWK, sign(key, claims(now), header_of(key, alg="ES256")), now=now)


# --- V-6: signature ------------------------------------------------------------------------


def test_v6_flipped_signature_bit_rejected(any_key: DPoPKey, now: float) -> None:
    """V-6: one flipped signature bit, for every algorithm."""
    proof = create_proof(any_key, htm="POST", htu=HTU, now=now)
    reject(Reason.BAD_SIGNATURE, flip_signature_bit(proof), now=now)


def test_v6_signature_by_another_key_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-6: signed by a key other than the header jwk."""
    other = DPoPKey.generate("ES256")
    header_b64 = es256_key.proof_header_b64
    signing_input = f"{header_b64}.{b64url_encode(json_dumps(claims(now)))}"
    proof = f"{signing_input}.{b64url_encode(other.sign(signing_input.encode()))}"
    reject(Reason.BAD_SIGNATURE, proof, now=now)


def test_v6_der_ecdsa_signature_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-6/P-14: a DER-encoded ECDSA signature is refused."""
    head, sig = create_proof(es256_key, htm="POST", htu=HTU, now=now).rsplit(".", 1)
    raw = b64url_decode(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    reject(Reason.BAD_SIGNATURE, f"{head}.{b64url_encode(der)}", now=now)


# --- V-7: public jwk -----------------------------------------------------------------------


def test_v7_private_jwk_rejected(any_key: DPoPKey, now: float) -> None:
    """V-7: the same proof with the key's own private members in jwk (re-signed)."""
    header = header_of(any_key, jwk=any_key.private_jwk())
    reject(Reason.PRIVATE_JWK, sign(any_key, claims(now), header), now=now)


# Edwards25519 arithmetic (RFC 8032 §5.1), only to derive the small-order points independently.
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _ed_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P
    return x3, y3


def _ed_sqrt(a: int) -> int:
    x = pow(a, (_P + 3) // 8, _P)
    if (x * x - a) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (x * x - a) % _P == 0
    return x


def _small_order_points() -> set[tuple[int, int]]:
    """The 8-torsion of edwards25519: y² of an order-8 point solves d·y⁴ + 2y² − 1 = 0."""
    y2 = (-1 - _ed_sqrt(1 + _D)) * pow(_D, -1, _P) % _P
    y = _ed_sqrt(y2)
    x = _ed_sqrt((y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P)
    points, point = set(), (0, 1)
    for _ in range(8):
        point = _ed_add(point, (x, y))
        points.add(point)
    assert point == (0, 1)  # 8·P is the identity
    return points


def test_v7_small_order_ed25519_keys_rejected(now: float) -> None:
    """V-5/V-6: Ed25519 jwk values of small order (all 8, both sign bits, and non-canonical
    y >= p) are refused: for them a signature can be forged without any private key."""
    key = DPoPKey.generate("EdDSA")
    points = _small_order_points()
    assert len(points) == 8
    encodings = set()
    for y in {y for _, y in points}:
        for y_enc in (y, y + _P):  # canonical, and non-canonical when it fits in 255 bits
            if y_enc < 1 << 255:
                encodings.add(y_enc.to_bytes(32, "little"))
                encodings.add((y_enc | 1 << 255).to_bytes(32, "little"))
    for raw in encodings:
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
        proof = sign(key, claims(now), header_of(key, jwk=jwk))
        reject(Reason.BAD_JWK, proof, now=now)
    # The identity key "signs" anything with R = identity, S = 0; it never gets that far.
    identity = b"\x01" + bytes(31)
    header = header_of(key, jwk={"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(identity)})
    signing_input = f"{b64url_encode(json_dumps(header))}.{b64url_encode(json_dumps(claims(now)))}"
    reject(Reason.BAD_JWK, f"{signing_input}.{b64url_encode(identity + bytes(32))}", now=now)


# --- V-8: htm ------------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "method"), [("post", "POST"), ("GET", "POST"), ("POST", "post")])
def test_v8_htm_mismatch_rejected(es256_key: DPoPKey, now: float, claim: str, method: str) -> None:
    """V-8: htm must equal the method, case-sensitively."""
    proof = sign(es256_key, claims(now, htm=claim))
    reject(Reason.HTM_MISMATCH, proof, htm=method, now=now)


# --- V-9 / V-13: htu -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim",
    [
        "https://server.example.com/other",
        "http://server.example.com/token",
        "https://server.example.com:8443/token",
        "https://evil.example/token",
        "https://user@server.example.com/token",
        "https://server.example.com/token/",
        "https://server.example.com/TOKEN",
    ],
)
def test_v9_htu_mismatch_rejected(es256_key: DPoPKey, now: float, claim: str) -> None:
    """V-9: other path, scheme, port, host, userinfo, trailing slash or path case."""
    reject(Reason.HTU_MISMATCH, sign(es256_key, claims(now, htu=claim)), now=now)


def test_v9_request_query_ignored(es256_key: DPoPKey, now: float) -> None:
    """V-9: request …/token?x=1 with htu …/token is accepted."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    assert verify_proof(proof, htm="POST", htu=HTU + "?x=1#y", now=now).htu == HTU


@pytest.mark.parametrize(
    "claim",
    [
        "https://SERVER.example.com:443/./token",
        "HTTPS://server.example.com/token",
        "https://server.example.com:/token",
        "https://server.example.com/a/../%74oken",
    ],
)
def test_v13_htu_normalised_before_comparison(es256_key: DPoPKey, now: float, claim: str) -> None:
    """V-13: RFC 3986 §6.2.2/§6.2.3 normalisation on both sides."""
    proof = sign(es256_key, claims(now, htu=claim))
    assert verify_proof(proof, htm="POST", htu=HTU, now=now).htu == HTU


# --- V-10: nonce ---------------------------------------------------------------------------


@pytest.fixture
def issuer() -> NonceIssuer:
    return NonceIssuer([SECRET], step=60, accept_past_steps=2)


NONCE_POLICY = ProofPolicy(require_nonce=True)


def test_v10_wrong_nonce_gets_fresh_nonce(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer
) -> None:
    """V-10: a nonce the server did not supply → use_dpop_nonce with a fresh DPoP-Nonce."""
    forged = NonceIssuer([b"x" * 32]).issue(now=now)
    proof = create_proof(es256_key, htm="POST", htu=HTU, nonce=forged, now=now)
    with pytest.raises(UseNonceError) as info:
        verify_proof(proof, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now)
    assert info.value.reason == Reason.NONCE_MISMATCH
    assert issuer.verify(info.value.nonce, now=now).current
    response = info.value.as_response(role="as")
    assert response.status == 400
    assert response.header("DPoP-Nonce") == info.value.nonce
    assert json.loads(response.body)["error"] == "use_dpop_nonce"
    rs = info.value.as_response(role="rs", algs=["ES256"])
    assert rs.status == 401
    assert 'error="use_dpop_nonce"' in (rs.header("WWW-Authenticate") or "")


def test_v10_missing_nonce_when_required(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer
) -> None:
    """V-10 (SEC-81): no nonce when required → NONCE_REQUIRED carrying a fresh nonce."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    with pytest.raises(UseNonceError) as info:
        verify_proof(proof, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now)
    assert info.value.reason == Reason.NONCE_REQUIRED
    retry = create_proof(es256_key, htm="POST", htu=HTU, nonce=info.value.nonce, now=now)
    verified = verify_proof(
        retry, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now
    )
    assert verified.nonce == info.value.nonce
    assert verified.nonce_info is not None
    assert verified.nonce_info.current


@pytest.mark.parametrize("issued_offset", [-600, -181, 600])
def test_v10_stale_or_future_nonce_rejected(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer, issued_offset: float
) -> None:
    """V-10 (SEC-82): a nonce outside the issuer's window → NONCE_MISMATCH."""
    stale = issuer.issue(now=now + issued_offset)
    proof = create_proof(es256_key, htm="POST", htu=HTU, nonce=stale, now=now)
    with pytest.raises(UseNonceError) as info:
        verify_proof(proof, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now)
    assert info.value.reason == Reason.NONCE_MISMATCH


def test_v10_tampered_nonce_rejected(es256_key: DPoPKey, now: float, issuer: NonceIssuer) -> None:
    """V-10: a valid nonce with one character changed (forged MAC) → NONCE_MISMATCH."""
    nonce = issuer.issue(now=now)
    forged = nonce[:-2] + ("A" if nonce[-2] != "A" else "B") + nonce[-1]
    proof = create_proof(es256_key, htm="POST", htu=HTU, nonce=forged, now=now)
    with pytest.raises(UseNonceError) as info:
        verify_proof(proof, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now)
    assert info.value.reason == Reason.NONCE_MISMATCH


def test_v10_require_nonce_needs_an_issuer(es256_key: DPoPKey, now: float) -> None:
    """V-10: a policy requiring nonces without a nonce issuer is a configuration error."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    with pytest.raises(ValueError, match=r"."):
        verify_proof(proof, htm="POST", htu=HTU, policy=NONCE_POLICY, now=now)


def test_v11_nonce_carries_freshness_for_wrong_iat(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer
) -> None:
    """V-11 (SEC-6): a valid nonce vouches for freshness when the client clock is off."""
    nonce = issuer.issue(now=now)
    for offset in (-3600, 3600):
        proof = create_proof(es256_key, htm="POST", htu=HTU, nonce=nonce, now=now + offset)
        verified = verify_proof(
            proof, htm="POST", htu=HTU, policy=NONCE_POLICY, nonce_check=issuer, now=now
        )
        assert verified.iat == int(now + offset)


@pytest.mark.parametrize(
    ("offset", "reason"), [(-3600, Reason.IAT_TOO_OLD), (3600, Reason.IAT_IN_FUTURE)]
)
def test_v11_nonce_without_freshness_policy_refuses_wrong_iat(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer, offset: int, reason: Reason
) -> None:
    """V-11: with nonce_carries_freshness=False a valid nonce does not excuse iat."""
    policy = ProofPolicy(require_nonce=True, nonce_carries_freshness=False)
    proof = create_proof(
        es256_key, htm="POST", htu=HTU, nonce=issuer.issue(now=now), now=now + offset
    )
    reject(reason, proof, policy=policy, nonce_check=issuer, now=now)


@pytest.mark.parametrize(
    ("offset", "reason"), [(-3600, Reason.IAT_TOO_OLD), (3600, Reason.IAT_IN_FUTURE)]
)
def test_v11_wrong_iat_without_nonce_gets_use_dpop_nonce(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer, offset: int, reason: Reason
) -> None:
    """V-11 (SEC-6): a wrong iat and no nonce, at a server with nonces → a nonce to heal with."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now + offset)
    with pytest.raises(UseNonceError) as info:
        verify_proof(proof, htm="POST", htu=HTU, nonce_check=issuer, now=now)
    assert info.value.reason == reason
    healed = create_proof(es256_key, htm="POST", htu=HTU, nonce=info.value.nonce, now=now + offset)
    assert (
        verify_proof(healed, htm="POST", htu=HTU, nonce_check=issuer, now=now).nonce_info
        is not None
    )


# --- V-11: iat window ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "reason"), [(-600, Reason.IAT_TOO_OLD), (600, Reason.IAT_IN_FUTURE)]
)
def test_v11_iat_ten_minutes_off_rejected(
    es256_key: DPoPKey, now: float, offset: int, reason: Reason
) -> None:
    """V-11: iat = now ± 10 min is refused; the error is invalid_dpop_proof."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now + offset)
    reject(reason, proof, policy=ProofPolicy(max_age=300), now=now)


def test_v11_iat_30_seconds_old_accepted(es256_key: DPoPKey, now: float) -> None:
    """V-11: now - 30 s is fine."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now - 30)
    assert verify_proof(proof, htm="POST", htu=HTU, now=now).iat == now - 30


@pytest.mark.parametrize("iat", ["1700000000", True, False, [1700000000], {"t": 1}, 10**400])
def test_v11_iat_not_a_number_rejected(es256_key: DPoPKey, now: float, iat: object) -> None:
    """V-11: iat as a string, JSON true/false (bool is an int in Python) or an integer too
    large for a float (SEC-52) → BAD_CLAIM."""
    reject(Reason.BAD_CLAIM, sign(es256_key, claims(now, iat=iat)), now=now)


@pytest.mark.parametrize(
    ("policy", "offset", "reason"),
    [
        (ProofPolicy(), -61, Reason.IAT_TOO_OLD),
        (ProofPolicy(), -60, None),
        (ProofPolicy(), -59, None),
        (ProofPolicy(), 4, None),
        (ProofPolicy(), 5, None),
        (ProofPolicy(), 6, Reason.IAT_IN_FUTURE),
        (ProofPolicy(max_age=300, future_skew=0), -301, Reason.IAT_TOO_OLD),
        (ProofPolicy(max_age=300, future_skew=0), -300, None),
        (ProofPolicy(max_age=300, future_skew=0), -299, None),
        (ProofPolicy(max_age=300, future_skew=0), 0, None),
        (ProofPolicy(max_age=300, future_skew=0), 1, Reason.IAT_IN_FUTURE),
        (ProofPolicy(max_age=10, future_skew=30), 29, None),
        (ProofPolicy(max_age=10, future_skew=30), 30, None),
        (ProofPolicy(max_age=10, future_skew=30), 31, Reason.IAT_IN_FUTURE),
    ],
)
def test_v11_iat_window_boundaries(
    es256_key: DPoPKey, now: float, policy: ProofPolicy, offset: int, reason: Reason | None
) -> None:
    """V-11: exactly at ``max_age``/``future_skew`` accepted; one second beyond refused."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now + offset)
    if reason is None:
        assert verify_proof(proof, htm="POST", htu=HTU, policy=policy, now=now).iat == now + offset
    else:
        reject(reason, proof, policy=policy, now=now)


# --- V-12: ath and the bound key -----------------------------------------------------------


def test_v12_ath_for_another_token_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-12 (SEC-60): proof ath for token A, presented with token B."""
    proof = create_proof(es256_key, htm="GET", htu=HTU, access_token="token-A", now=now)
    reject(Reason.ATH_MISMATCH, proof, htm="GET", access_token="token-B", now=now)
    assert verify_proof(proof, htm="GET", htu=HTU, access_token="token-A", now=now).ath


def test_v12_expected_jkt_mismatch_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-12 (SEC-61): the token/code is bound to another key → JKT_MISMATCH."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    other = DPoPKey.generate("ES256").jkt
    reject(Reason.JKT_MISMATCH, proof, expected_jkt=other, now=now)
    reject(Reason.JKT_MISMATCH, proof, expected_jkt="", now=now)
    reject(Reason.JKT_MISMATCH, proof, expected_jkt=es256_key.jkt + "\u00e9", now=now)
    assert (
        verify_proof(proof, htm="POST", htu=HTU, expected_jkt=es256_key.jkt, now=now).jkt
        == es256_key.jkt
    )


# --- V-14: any order -----------------------------------------------------------------------


@dataclass
class _Proof:
    key: DPoPKey
    now: float
    header: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    bad_signature: bool = False
    expected_jkt: str | None = None

    def build(self) -> str:
        proof = sign(self.key, self.payload, self.header)
        return flip_signature_bit(proof) if self.bad_signature else proof


DEFECTS: dict[str, tuple[Callable[[_Proof], object], Reason]] = {
    "typ": (lambda p: p.header.update(typ="JWT"), Reason.BAD_TYP),
    "private": (lambda p: p.header["jwk"].update(d="AQAB"), Reason.PRIVATE_JWK),
    "jti": (lambda p: p.payload.pop("jti"), Reason.MISSING_CLAIM),
    "htm": (lambda p: p.payload.update(htm="GET"), Reason.HTM_MISMATCH),
    "htu": (lambda p: p.payload.update(htu=HTU + "/x"), Reason.HTU_MISMATCH),
    "iat": (lambda p: p.payload.update(iat=int(p.now) - 600), Reason.IAT_TOO_OLD),
    "ath": (lambda p: p.payload.update(ath="x" * 43), Reason.ATH_MISMATCH),
    "jkt": (lambda p: setattr(p, "expected_jkt", "A" * 43), Reason.JKT_MISMATCH),
    "signature": (lambda p: setattr(p, "bad_signature", True), Reason.BAD_SIGNATURE),
}


def _outcome(key: DPoPKey, now: float, defects: tuple[str, ...], warm: bool) -> Reason | None:
    case = _Proof(key, now, header_of(key), claims(now, ath=access_token_hash("tok")))
    for name in defects:
        DEFECTS[name][0](case)
    proof_module._key_cache.clear()
    if warm:  # a valid proof with the same header bytes fills the key cache first
        with_header = sign(key, claims(now, ath=access_token_hash("tok")), case.header)
        with contextlib.suppress(InvalidProofError):
            verify_proof(with_header, htm="POST", htu=HTU, access_token="tok", now=now)
    try:
        verify_proof(
            case.build(),
            htm="POST",
            htu=HTU,
            access_token="tok",
            expected_jkt=case.expected_jkt,
            now=now,
        )
    except InvalidProofError as exc:
        return exc.reason
    return None


def test_v14_single_defects_rejected_whatever_the_cache(es256_key: DPoPKey, now: float) -> None:
    """V-14: each defect alone is refused with its reason, with a cold or warm key cache."""
    assert _outcome(es256_key, now, (), warm=False) is None
    for name, (_, reason) in DEFECTS.items():
        assert _outcome(es256_key, now, (name,), warm=False) == reason, name
        assert _outcome(es256_key, now, (name,), warm=True) == reason, name


def test_v14_any_two_defects_rejected(es256_key: DPoPKey, now: float) -> None:
    """V-14: with two defects the proof is refused for one of them, whichever runs first,
    and the outcome does not depend on the key cache."""
    for pair in itertools.combinations(DEFECTS, 2):
        cold = _outcome(es256_key, now, pair, warm=False)
        warm = _outcome(es256_key, now, pair, warm=True)
        assert cold in {DEFECTS[name][1] for name in pair}, pair
        assert warm == cold, pair


# --- replay key and expiry -----------------------------------------------------------------


def test_replay_key_namespaced_fixed_size_and_stable(now: float) -> None:
    """SEC-4: ``dpopkit:jti:<64 hex>``, the same for the same (jkt, jti), whatever the jti size."""
    fig02 = _load("rfc9449-fig02-dpop-proof-token-request.json")
    fig07 = _load("rfc9449-fig07-dpop-proof-refresh-request.json")
    first = verify_proof(fig02["compact"], **_rfc_request(fig02))
    second = verify_proof(fig07["compact"], **_rfc_request(fig07))
    # Figure 7 reuses Figure 2's jti with the same key (RFC 9449 §4.2 examples): one replay key.
    assert first.jti == second.jti
    assert first.replay_key == second.replay_key
    key = DPoPKey.generate("ES256")
    keys = set()
    for jti in ("a" * 16, "b" * 16, "c" * 256):
        verified = verify_proof(sign(key, claims(now, jti=jti)), htm="POST", htu=HTU, now=now)
        prefix, _, digest = verified.replay_key.rpartition(":")
        assert prefix == "dpopkit:jti"
        assert len(digest) == 64
        int(digest, 16)
        keys.add(verified.replay_key)
    assert len(keys) == 3
    # Same jti under another key: another replay key.
    other = verify_proof(
        sign(DPoPKey.generate("ES256"), claims(now, jti="a" * 16)), htm="POST", htu=HTU, now=now
    )
    assert other.replay_key not in keys
    # Same (jkt, jti) in two different proofs: the same key.
    again = verify_proof(
        sign(key, claims(now, jti="a" * 16, iat=int(now) - 3)), htm="POST", htu=HTU, now=now
    )
    assert again.replay_key in keys


def test_record_proof_second_use_replayed(es256_key: DPoPKey, now: float) -> None:
    """V-3/§11.1 (SEC-71): record_proof with the memory cache; the second use → REPLAYED_JTI."""
    cache = MemoryReplayCache()
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    record_proof(cache, verify_proof(proof, htm="POST", htu=HTU, now=now), now=now)
    replayed = verify_proof(proof, htm="POST", htu=HTU, now=now + 1)
    with pytest.raises(InvalidProofError) as info:
        record_proof(cache, replayed, now=now + 1)
    assert info.value.reason == Reason.REPLAYED_JTI
    fresh = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    record_proof(cache, verify_proof(fresh, htm="POST", htu=HTU, now=now), now=now)


def _last_accepting_instant(proof: str, start: float, **kwargs: Any) -> float:
    """Scan forward in 0.5 s steps for the last instant ``verify_proof`` still accepts."""
    t = start
    while True:
        try:
            verify_proof(proof, htm="POST", htu=HTU, now=t + 0.5, **kwargs)
        except (InvalidProofError, UseNonceError):
            return t
        t += 0.5


@pytest.mark.parametrize("iat_offset", [-30, 0, 5])
def test_sec76_replay_expiry_covers_future_dated_iat(
    es256_key: DPoPKey, now: float, iat_offset: int
) -> None:
    """SEC-76: the replay entry outlives the last instant the proof is accepted, also when
    iat lies in the future (expiry from max(now, iat), not from now)."""
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now + iat_offset)
    verified = verify_proof(proof, htm="POST", htu=HTU, now=now)
    last = _last_accepting_instant(proof, now)
    assert last == now + iat_offset + 60
    assert verified.replay_expires_at > last
    cache = MemoryReplayCache()
    record_proof(cache, verified, now=now)
    with pytest.raises(InvalidProofError) as info:
        record_proof(cache, verify_proof(proof, htm="POST", htu=HTU, now=last), now=last)
    assert info.value.reason == Reason.REPLAYED_JTI


def test_sec76_replay_expiry_covers_nonce_carried_freshness(
    es256_key: DPoPKey, now: float, issuer: NonceIssuer
) -> None:
    """SEC-76/SEC-6: with freshness from the nonce (iat an hour old), the entry lives until
    the nonce stops being accepted."""
    nonce = issuer.issue(now=now)
    proof = create_proof(es256_key, htm="POST", htu=HTU, nonce=nonce, now=now - 3600)
    kwargs: dict[str, Any] = {"policy": NONCE_POLICY, "nonce_check": issuer}
    verified = verify_proof(proof, htm="POST", htu=HTU, now=now, **kwargs)
    assert verified.nonce_info is not None
    last = _last_accepting_instant(proof, now, **kwargs)
    assert last > now + 60  # beyond what an iat-based expiry from now would cover
    assert verified.replay_expires_at > last
    cache = MemoryReplayCache()
    record_proof(cache, verified, now=now)
    again = verify_proof(proof, htm="POST", htu=HTU, now=last, **kwargs)
    with pytest.raises(InvalidProofError) as info:
        record_proof(cache, again, now=last)
    assert info.value.reason == Reason.REPLAYED_JTI


# --- the header key cache ------------------------------------------------------------------


def _fields(v: VerifiedProof) -> tuple[object, ...]:
    scalars = (v.jkt, v.jti, v.iat, v.htm, v.htu, v.alg, v.nonce, v.ath, v.nonce_info)
    return (
        *scalars,
        v.replay_key,
        v.replay_expires_at,
        *map(dict, (v.public_jwk, v.claims, v.header)),
    )


def test_key_cache_same_results(any_key: DPoPKey, now: float) -> None:
    """The cache keyed by header bytes changes nothing in the result (cold vs warm)."""
    proof_module._key_cache.clear()
    proof = create_proof(any_key, htm="POST", htu=HTU, access_token="t", now=now)
    cold = verify_proof(proof, htm="POST", htu=HTU, access_token="t", now=now)
    assert proof_module._key_cache.get(proof.split(".")[0]) is not None
    warm = verify_proof(proof, htm="POST", htu=HTU, access_token="t", now=now)
    assert _fields(cold) == _fields(warm)
    # A cached header does not excuse a bad signature or a bad claim.
    reject(Reason.BAD_SIGNATURE, flip_signature_bit(proof), now=now)
    reject(Reason.HTM_MISMATCH, proof, htm="GET", access_token="t", now=now)


def test_key_cache_not_filled_by_failed_proofs(es256_key: DPoPKey, now: float) -> None:
    """A header is cached only after a fully verified proof."""
    proof_module._key_cache.clear()
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    reject(Reason.BAD_SIGNATURE, flip_signature_bit(proof), now=now)
    assert proof_module._key_cache.get(proof.split(".")[0]) is None


def test_key_cache_reapplies_stricter_alg_policy(es256_key: DPoPKey, now: float) -> None:
    """An alg allowed when the header was cached but disallowed now is refused."""
    proof_module._key_cache.clear()
    verify_proof(
        create_proof(es256_key, htm="POST", htu=HTU, now=now), htm="POST", htu=HTU, now=now
    )
    assert proof_module._key_cache.get(es256_key.proof_header_b64) is not None
    strict = ProofPolicy(algorithms=frozenset({"EdDSA", "ES384"}))
    proof = create_proof(es256_key, htm="POST", htu=HTU, now=now)
    reject(Reason.UNSUPPORTED_ALG, proof, policy=strict, now=now)


def test_key_cache_reapplies_stricter_rsa_size(now: float) -> None:
    """An RSA-2048 header cached under the default policy is refused under min_rsa_bits=3072."""
    key = DPoPKey.generate("RS256")
    proof_module._key_cache.clear()
    verify_proof(create_proof(key, htm="POST", htu=HTU, now=now), htm="POST", htu=HTU, now=now)
    proof = create_proof(key, htm="POST", htu=HTU, now=now)
    reject(Reason.BAD_JWK, proof, policy=ProofPolicy(min_rsa_bits=3072), now=now)


# --- policy and error rendering ------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"algorithms": frozenset()},
        {"algorithms": frozenset({"HS256"})},
        {"algorithms": frozenset({"none"})},
        {"max_age": 0},
        {"max_age": float("nan")},
        {"future_skew": -1},
        {"max_proof_length": 8},
        {"min_rsa_bits": 1024},
    ],
)
def test_policy_refuses_unsafe_settings(settings: dict[str, Any]) -> None:
    """ProofPolicy refuses symmetric algs, RSA < 2048, empty lists and nonsense windows."""
    with pytest.raises(ValueError, match=r"."):
        ProofPolicy(**settings)


def test_invalid_proof_renders_per_role(es256_key: DPoPKey, now: float) -> None:
    """§5/§7.1: invalid_dpop_proof is 400 JSON at the AS and 401 + challenge with algs at the RS."""
    proof = create_proof(es256_key, htm="POST", htu="https://server.example.com/other", now=now)
    error = reject(Reason.HTU_MISMATCH, proof, now=now)
    as_response = error.as_response(role="as")
    assert as_response.status == 400
    assert json.loads(as_response.body)["error"] == "invalid_dpop_proof"
    rs_response = error.as_response(role="rs", algs=ProofPolicy().algs_param.split())
    assert rs_response.status == 401
    challenge = rs_response.header("WWW-Authenticate") or ""
    assert challenge.startswith("DPoP ")
    assert 'error="invalid_dpop_proof"' in challenge
    assert 'algs="ES256' in challenge
    # The description never echoes the expected htu.
    assert "server.example.com/token" not in error.description


def test_verified_proof_facts(any_key: DPoPKey, now: float) -> None:
    """The result carries jkt (RFC 7638 of the header jwk), claims and header, read-only."""
    proof = create_proof(any_key, htm="PATCH", htu=HTU, claims={"x": 1}, now=now)
    verified = verify_proof(proof, htm="PATCH", htu=HTU, now=now)
    assert verified.jkt == jwk_thumbprint(_segments(proof)[0]["jwk"]) == any_key.jkt
    assert verified.claims["x"] == 1
    assert verified.header["typ"] == "dpop+jwt"
    with pytest.raises(TypeError):
        verified.header["typ"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        verified.claims["x"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        verified.public_jwk["x"] = "y"  # type: ignore[index]
