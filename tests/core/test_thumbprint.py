"""RFC 7638 thumbprints and ``ath`` (checklist X-1..X-4, P-11, P-15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpopkit import ALGORITHMS, DPoPKey, access_token_hash, jwk_thumbprint
from dpopkit.core.jws import b64url_decode

VECTORS = Path(__file__).parent.parent / "vectors"


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


RSA_7638 = vector("rfc7638-sec3.1-rsa-jwk-thumbprint.json")
EC_9449 = vector("rfc9449-ec-p256-jwk-thumbprint.json")
OKP_8037 = vector("rfc8037-appA-ed25519-jwk-thumbprint.json")
ATH = vector("rfc9449-access-token-ath.json")


def test_x1_rfc7638_rsa_vector() -> None:
    thumbprint = jwk_thumbprint(RSA_7638["jwk"])
    assert thumbprint == RSA_7638["expected"]["thumbprint"]
    assert list(b64url_decode(thumbprint)) == RSA_7638["expected"]["thumbprint_octets"]
    assert len(thumbprint) == 43


def test_x1_rfc9449_ec_p256_vector() -> None:
    # Figure 4's member order is kty, x, y, crv (P-15): the thumbprint does not care.
    assert list(EC_9449["jwk"]) == ["kty", "x", "y", "crv"]
    assert jwk_thumbprint(EC_9449["jwk"]) == EC_9449["expected"]["thumbprint"]


def test_x4_rfc8037_ed25519_private_jwk_equals_public() -> None:
    private = OKP_8037["jwk"]
    assert "d" in private
    public = {k: v for k, v in private.items() if k != "d"}
    assert jwk_thumbprint(private) == OKP_8037["expected"]["thumbprint"]
    assert jwk_thumbprint(public) == OKP_8037["expected"]["thumbprint"]
    assert b64url_decode(jwk_thumbprint(private)).hex() == OKP_8037["expected"]["thumbprint_hex"]


def test_x4_rfc8037_private_key_loads_to_the_same_jkt() -> None:
    key = DPoPKey.from_jwk(OKP_8037["jwk"])
    assert key.jkt == OKP_8037["expected"]["thumbprint"]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_x4_generated_private_and_public_jwk_agree(alg: str) -> None:
    key = DPoPKey.generate(alg) if not alg.startswith(("RS", "PS")) else _rsa()
    assert jwk_thumbprint(key.private_jwk()) == jwk_thumbprint(key.public_jwk) == key.jkt


_RSA: list[DPoPKey] = []


def _rsa() -> DPoPKey:
    if not _RSA:
        _RSA.append(DPoPKey.generate("RS256"))
    return _RSA[0]


@pytest.mark.parametrize("vec", [RSA_7638, EC_9449, OKP_8037], ids=["rsa", "ec", "okp"])
def test_p15_member_order_is_irrelevant(vec: dict[str, Any]) -> None:
    jwk = vec["jwk"]
    reversed_jwk = dict(reversed(list(jwk.items())))
    assert list(reversed_jwk) != list(jwk)
    assert jwk_thumbprint(reversed_jwk) == vec["expected"]["thumbprint"]


@pytest.mark.parametrize("vec", [RSA_7638, EC_9449, OKP_8037], ids=["rsa", "ec", "okp"])
def test_x2_optional_members_never_enter_the_hash(vec: dict[str, Any]) -> None:
    extra = {
        "kid": "2011-04-29",
        "alg": "ES256",
        "use": "sig",
        "key_ops": ["verify"],
        "ext": True,
        "x5c": ["MIIB"],
        "x5t#S256": "abc",
        "custom": {"nested": 1},
    }
    jwk = {**extra, **vec["jwk"]}
    assert jwk_thumbprint(jwk) == vec["expected"]["thumbprint"]


def test_x2_members_of_another_key_type_never_enter_the_hash() -> None:
    # An EC JWK carrying an RSA member ``n`` (and an OKP JWK carrying ``y``) hash the same.
    assert jwk_thumbprint({**EC_9449["jwk"], "n": "AQAB"}) == EC_9449["expected"]["thumbprint"]
    assert jwk_thumbprint({**OKP_8037["jwk"], "y": "AQAB"}) == OKP_8037["expected"]["thumbprint"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('P-256"', id="quote"),
        pytest.param("P-256\\", id="backslash"),
        pytest.param("P-256é", id="non-ascii"),
        pytest.param("P-256\n", id="control"),
        pytest.param("P-256\x7f", id="del"),
        pytest.param("", id="empty"),
    ],
)
def test_x3_values_needing_json_escapes_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint({**EC_9449["jwk"], "crv": value})


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "k": "AAAA"}, id="oct"),
        pytest.param({"kty": "ec", "crv": "P-256", "x": "A", "y": "A"}, id="kty-case"),
        pytest.param({"crv": "P-256", "x": "A", "y": "A"}, id="no-kty"),
        pytest.param({"kty": 1}, id="kty-not-string"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "A"}, id="ec-missing-y"),
        pytest.param({"kty": "RSA", "n": "AQAB", "e": 65537}, id="rsa-e-number"),
        pytest.param({"kty": "OKP", "crv": "Ed25519"}, id="okp-missing-x"),
    ],
)
def test_unsupported_or_incomplete_jwks_are_refused(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_different_keys_give_different_thumbprints() -> None:
    thumbprints = {DPoPKey.generate("ES256").jkt for _ in range(20)}
    thumbprints |= {DPoPKey.generate("EdDSA").jkt for _ in range(20)}
    assert len(thumbprints) == 40


def test_p11_ath_vector() -> None:
    assert access_token_hash(ATH["access_token"]) == ATH["expected"]["ath"]


def test_p11_ath_hashes_the_token_exactly_as_sent() -> None:
    token = ATH["access_token"]
    assert access_token_hash("DPoP " + token) != ATH["expected"]["ath"]
    assert access_token_hash(token + " ") != ATH["expected"]["ath"]
    assert len(access_token_hash("x")) == 43
    assert "=" not in access_token_hash("x")
