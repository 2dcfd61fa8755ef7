"""Differential tests against PyJWT, both ways.

PyJWT signs DPoP proofs with its own JWK export (``to_jwk``) and ``verify_proof``
accepts them; PyJWT verifies our proofs with the embedded ``jwk``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dpopkit import (
    DPoPKey,
    InvalidProofError,
    Reason,
    access_token_hash,
    create_proof,
    jwk_thumbprint,
    verify_proof,
)
from dpopkit.core.algorithms import PrivateKey
from dpopkit.core.jws import b64url_decode, json_loads_object

T0 = 1_700_000_000
HTU = "https://resource.example.org/protectedresource"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
ALGS = ["ES256", "ES384", "ES512", "EdDSA", "PS256", "RS256"]
# PyJWT checks no time claims here: dpopkit's window is what is under test.
NO_TIME_CHECKS: Any = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


@cache
def private_key(alg: str) -> PrivateKey:
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        return ec.generate_private_key(curve)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pyjwt_public_jwk(alg: str) -> dict[str, Any]:
    public = private_key(alg).public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    assert isinstance(public, rsa.RSAPublicKey)
    return RSAAlgorithm.to_jwk(public, as_dict=True)


def pyjwt_proof(alg: str, claims: dict[str, Any]) -> str:
    headers = {"typ": "dpop+jwt", "jwk": pyjwt_public_jwk(alg)}
    return jwt.encode(claims, private_key(alg), algorithm=alg, headers=headers)


@pytest.mark.parametrize("alg", ALGS)
def test_pyjwt_proofs_verify_in_dpopkit(alg: str) -> None:
    claims = {
        "jti": "-BwC3ESc6acc2lTc",
        "htm": "POST",
        "htu": HTU,
        "iat": T0,
        "ath": access_token_hash(TOKEN),
        "nonce": "eyJ7S_zG.eyJH0-Z.HX4w-7v",
    }
    proof = pyjwt_proof(alg, claims)
    checked = verify_proof(proof, htm="POST", htu=HTU, access_token=TOKEN, now=T0 + 30)
    assert checked.alg == alg
    assert checked.jti == claims["jti"]
    assert checked.nonce == claims["nonce"]
    assert checked.jkt == jwk_thumbprint(pyjwt_public_jwk(alg))
    assert checked.jkt == DPoPKey.from_private_key(private_key(alg), alg=alg).jkt


@pytest.mark.parametrize("alg", ALGS)
def test_pyjwt_proofs_failing_a_check_are_refused(alg: str) -> None:
    proof = pyjwt_proof(alg, {"jti": "x" * 16, "htm": "POST", "htu": HTU, "iat": T0})
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, htm="POST", htu=HTU, access_token=TOKEN, now=T0)
    assert info.value.reason is Reason.MISSING_CLAIM
    with pytest.raises(InvalidProofError) as old:
        verify_proof(proof, htm="POST", htu=HTU, now=T0 + 3600)
    assert old.value.reason is Reason.IAT_TOO_OLD


def test_pyjwt_hs256_proof_is_refused() -> None:
    # P-3: a MAC-signed "proof" never verifies, whatever key PyJWT used.
    proof = jwt.encode(
        {"jti": "x" * 16, "htm": "POST", "htu": HTU, "iat": T0},
        "a shared secret that is long enough for HS256!",
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": pyjwt_public_jwk("ES256")},
    )
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, htm="POST", htu=HTU, now=T0)
    assert info.value.reason is Reason.UNSUPPORTED_ALG


@pytest.mark.parametrize("alg", ALGS)
def test_our_proofs_verify_in_pyjwt(alg: str) -> None:
    key = DPoPKey.generate(alg) if not alg.startswith(("PS", "RS")) else _rsa_key(alg)
    proof = create_proof(key, htm="GET", htu=HTU + "?x=1", access_token=TOKEN, now=T0)
    header = json_loads_object(b64url_decode(proof.split(".")[0]))
    assert jwt.get_unverified_header(proof)["typ"] == "dpop+jwt"
    public = jwt.PyJWK(header["jwk"], algorithm=alg)
    claims = jwt.decode(proof, public, algorithms=[alg], options=NO_TIME_CHECKS)
    assert claims["htu"] == HTU
    assert claims["htm"] == "GET"
    assert claims["ath"] == access_token_hash(TOKEN)
    assert claims["iat"] == T0


@cache
def _rsa_key(alg: str) -> DPoPKey:
    return DPoPKey.from_private_key(private_key("RS256"), alg=alg)
