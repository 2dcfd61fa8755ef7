"""DPoPKey: generation, JWK/PEM import and export, signers, repr, pickling.

Checklist: P-1, P-2, P-3, P-4, P-14 (keys side), C-23 (no private material in repr,
no pickling), X-4 (private and public thumbprints agree).
"""

from __future__ import annotations

import copy
import json
import pickle  # noqa: TID251 - only to prove that pickling a key is refused
from collections.abc import Callable, Mapping
from functools import cache

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dpopkit import ALGORITHMS, DPoPKey, InvalidProofError, Reason, Signer, create_proof
from dpopkit import verify_proof as verify
from dpopkit.core.algorithms import PrivateKey, spec_for
from dpopkit.core.jws import PRIVATE_JWK_MEMBERS, b64url_decode, json_loads_object
from dpopkit.core.jws import public_key_from_jwk as import_public
from dpopkit.core.thumbprint import jwk_thumbprint

NOW = 1_700_000_000.0
HTU = "https://server.example.com/token"
_KTY = {"ES": "EC", "Ed": "OKP", "PS": "RSA", "RS": "RSA"}


@cache
def key_for(alg: str) -> DPoPKey:
    """One key per algorithm for the module (RSA generation is slow)."""
    return DPoPKey.generate(alg)


@cache
def rsa_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused


def signature_verifies(key: DPoPKey, data: bytes, signature: bytes) -> bool:
    spec = spec_for(key.alg)
    assert spec is not None
    return spec.verify(import_public(key.public_jwk, spec), signature, data)


# -- generation --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_generate_every_algorithm_signs_verifiably(alg: str) -> None:
    key = key_for(alg)
    assert key.alg == alg
    jwk = key.public_jwk
    assert jwk["kty"] == _KTY[alg[:2]]
    # P-4: the public JWK never carries private members.
    assert PRIVATE_JWK_MEMBERS.isdisjoint(jwk)
    assert key.jkt == jwk_thumbprint(jwk)
    assert key.is_exportable
    data = b"header.payload"
    assert signature_verifies(key, data, key.sign(data))
    assert not signature_verifies(key, data + b"x", key.sign(data))


def test_generate_defaults_to_es256() -> None:
    assert DPoPKey.generate().alg == "ES256"


@pytest.mark.parametrize(("alg", "size"), [("ES256", 64), ("ES384", 96), ("ES512", 132)])
def test_p14_ecdsa_signature_is_raw_r_s_of_fixed_length(alg: str, size: int) -> None:
    signature = key_for(alg).sign(b"data")
    assert len(signature) == size


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_p1_p2_p4_proof_header_holds_typ_alg_and_public_jwk(alg: str) -> None:
    key = key_for(alg)
    header = json_loads_object(b64url_decode(key.proof_header_b64))
    assert header == {"typ": "dpop+jwt", "alg": alg, "jwk": key.public_jwk}


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256K", "RSA-OAEP", ""])
def test_p3_generate_refuses_symmetric_none_and_unknown_algorithms(alg: str) -> None:
    with pytest.raises(ValueError) as info:
        DPoPKey.generate(alg)
    assert not isinstance(info.value, InvalidProofError)


@pytest.mark.parametrize("bits", [1024, 2047])
def test_rsa_below_2048_bits_refused_at_generation(bits: int) -> None:
    with pytest.raises(ValueError):
        DPoPKey.generate("RS256", rsa_bits=bits)


def test_rsa_below_2048_bits_refused_when_wrapped_or_loaded() -> None:
    small = rsa_1024()
    with pytest.raises(ValueError):
        DPoPKey.from_private_key(small)
    pem = small.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        DPoPKey.from_pem(pem)


# -- wrapping cryptography keys ----------------------------------------------------------


@pytest.mark.parametrize(
    ("private", "alg"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (ec.generate_private_key(ec.SECP521R1()), "ES512"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_from_private_key_picks_the_fitting_algorithm(private: PrivateKey, alg: str) -> None:
    assert DPoPKey.from_private_key(private).alg == alg


def test_from_private_key_rsa_defaults_to_ps256() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert DPoPKey.from_private_key(private).alg == "PS256"
    assert DPoPKey.from_private_key(private, alg="RS512").alg == "RS512"


@pytest.mark.parametrize(
    ("private", "alg"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES384"),
        (ec.generate_private_key(ec.SECP384R1()), "RS256"),
        (ed25519.Ed25519PrivateKey.generate(), "ES256"),
        (ec.generate_private_key(ec.SECP256R1()), "EdDSA"),
        (ec.generate_private_key(ec.SECP256R1()), "PS256"),
        (ed25519.Ed25519PrivateKey.generate(), "HS256"),
    ],
)
def test_from_private_key_refuses_an_alg_that_does_not_fit(private: PrivateKey, alg: str) -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_private_key(private, alg=alg)


def test_from_private_key_refuses_unsupported_curves_and_types() -> None:
    k256 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError):
        DPoPKey.from_private_key(k256)
    with pytest.raises(ValueError):
        DPoPKey.from_private_key(k256, alg="ES256")
    with pytest.raises(TypeError):
        DPoPKey.from_private_key(x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]


# -- JWK round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_private_jwk_round_trip(alg: str) -> None:
    key = key_for(alg)
    exported = key.private_jwk()
    assert exported["alg"] == alg
    assert "d" in exported
    loaded = DPoPKey.from_jwk(exported)
    assert loaded == key
    assert loaded.alg == alg
    assert loaded.jkt == key.jkt
    # the private JWK's thumbprint is the public one's.
    assert jwk_thumbprint(exported) == key.jkt
    data = b"signed by the reloaded key"
    assert signature_verifies(key, data, loaded.sign(data))
    # A JSON string works as well as a mapping.
    assert DPoPKey.from_jwk(json.dumps(exported)) == key


def test_from_jwk_alg_argument_wins_over_member() -> None:
    exported = key_for("EdDSA").private_jwk()
    assert DPoPKey.from_jwk(exported, alg="Ed25519").alg == "Ed25519"
    exported.pop("alg")
    assert DPoPKey.from_jwk(exported).alg == "EdDSA"


def _ec_jwk() -> dict[str, str]:
    return key_for("ES256").private_jwk()


def _mutated(base: Mapping[str, str], **changes: str | None) -> dict[str, str]:
    out = dict(base)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param(lambda: key_for("ES256").public_jwk, id="public-only"),
        pytest.param(lambda: _mutated(_ec_jwk(), kty="oct"), id="oct"),
        pytest.param(lambda: _mutated(_ec_jwk(), kty=None), id="no-kty"),
        pytest.param(lambda: _mutated(_ec_jwk(), crv="P-192"), id="ec-unknown-crv"),
        pytest.param(lambda: _mutated(_ec_jwk(), crv="P-384"), id="ec-d-wrong-length"),
        pytest.param(lambda: _mutated(_ec_jwk(), d="A" * 43), id="ec-d-zero"),
        pytest.param(lambda: _mutated(_ec_jwk(), d="!!!"), id="d-not-base64url"),
        pytest.param(lambda: _mutated(_ec_jwk(), d=""), id="d-empty"),
        pytest.param(
            lambda: _mutated(_ec_jwk(), x=key_for("ES256").public_jwk["y"]), id="ec-x-mismatch"
        ),
        pytest.param(lambda: _mutated(_ec_jwk(), alg="RS256"), id="alg-does-not-fit"),
        pytest.param(lambda: _mutated(key_for("EdDSA").private_jwk(), crv="Ed448"), id="okp-ed448"),
        pytest.param(lambda: _mutated(key_for("EdDSA").private_jwk(), d="AAAA"), id="okp-d-short"),
        pytest.param(
            lambda: _mutated(key_for("EdDSA").private_jwk(), x=key_for("ES256").public_jwk["x"]),
            id="okp-x-mismatch",
        ),
        pytest.param(
            lambda: _mutated(key_for("RS256").private_jwk(), qi=None), id="rsa-missing-qi"
        ),
        pytest.param(
            lambda: _mutated(key_for("RS256").private_jwk(), p=key_for("PS256").private_jwk()["p"]),
            id="rsa-inconsistent-p",
        ),
    ],
)
def test_from_jwk_refuses_bad_private_jwks(jwk: Callable[[], dict[str, str]]) -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_jwk(jwk())


@pytest.mark.parametrize("text", ["[1, 2]", '"EC"', "3"])
def test_from_jwk_refuses_json_that_is_not_an_object(text: str) -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_jwk(text)


# -- PEM round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_pem_round_trip(alg: str) -> None:
    key = key_for(alg)
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = DPoPKey.from_pem(pem, alg=alg)
    assert loaded == key
    assert DPoPKey.from_pem(pem.decode(), alg=alg) == key


@pytest.mark.parametrize("password", [b"correct horse", "correct horse"])
def test_encrypted_pem_round_trip(password: bytes | str) -> None:
    key = key_for("ES384")
    pem = key.to_pem(password=password)
    assert b"ENCRYPTED" in pem
    assert DPoPKey.from_pem(pem, password=password) == key
    assert DPoPKey.from_pem(pem, password=b"correct horse") == key


def test_encrypted_pem_with_wrong_or_missing_password_is_value_error() -> None:
    pem = key_for("EdDSA").to_pem(password=b"right")
    with pytest.raises(ValueError):
        DPoPKey.from_pem(pem, password=b"wrong")
    with pytest.raises(ValueError):
        DPoPKey.from_pem(pem)


def test_pem_password_given_for_unencrypted_key_is_value_error() -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_pem(key_for("ES256").to_pem(), password=b"unexpected")


@pytest.mark.parametrize("data", [b"", b"not a pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_from_pem_refuses_garbage(data: bytes | str) -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_pem(data)


def test_from_pem_refuses_unsupported_key_types() -> None:
    for private in (x25519.X25519PrivateKey.generate(), dsa.generate_private_key(2048)):
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError):
            DPoPKey.from_pem(pem)


# -- signers (HSM, KMS, TPM, OS keystore) ------------------------------------------------


class RawECSigner:
    """An HSM-like signer: the private key never leaves it; it returns raw R||S."""

    def __init__(self, curve: ec.EllipticCurve | None = None, alg: str = "ES256") -> None:
        curve = curve if curve is not None else ec.SECP256R1()
        self._key = ec.generate_private_key(curve)
        self._alg = alg
        self._size = (curve.key_size + 7) // 8
        self.calls = 0

    @property
    def alg(self) -> str:
        return self._alg

    @property
    def public_jwk(self) -> Mapping[str, str]:
        # Exported the way a KMS would: with extra, optional members.
        jwk = DPoPKey.from_private_key(self._key).public_jwk
        return {**jwk, "kid": "hsm-slot-7", "use": "sig"}

    def _der(self, data: bytes) -> bytes:
        hash_alg = {32: hashes.SHA256(), 48: hashes.SHA384(), 66: hashes.SHA512()}[self._size]
        return self._key.sign(data, ec.ECDSA(hash_alg))

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        r, s = decode_dss_signature(self._der(data))
        return r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")


class DERSigner(RawECSigner):
    """A signer that wrongly returns DER (what cryptography and many KMS APIs produce)."""

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self._der(data)


def test_signer_protocol_is_runtime_checkable() -> None:
    assert isinstance(RawECSigner(), Signer)
    assert not isinstance(object(), Signer)


@pytest.mark.parametrize(
    ("curve", "alg"),
    [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")],
)
def test_from_signer_with_raw_r_s_signer_creates_verifiable_proofs(
    curve: ec.EllipticCurve, alg: str
) -> None:
    signer = RawECSigner(curve, alg)
    key = DPoPKey.from_signer(signer)
    assert signer.calls == 1  # the self-test
    assert key.alg == alg
    assert not key.is_exportable
    # Optional members of the signer's JWK never reach the proof header.
    assert set(key.public_jwk) == {"kty", "crv", "x", "y"}
    proof = create_proof(key, htm="POST", htu=HTU, now=NOW)
    checked = verify(proof, htm="POST", htu=HTU, now=NOW)
    assert checked.jkt == key.jkt == jwk_thumbprint(signer.public_jwk)


def test_p14_from_signer_returning_der_fails_the_self_test() -> None:
    with pytest.raises(ValueError):
        DPoPKey.from_signer(DERSigner())


def test_p14_der_signature_rejected_by_the_verifier() -> None:
    key = DPoPKey.from_signer(DERSigner(), self_test=False)
    proof = create_proof(key, htm="POST", htu=HTU, now=NOW)
    with pytest.raises(InvalidProofError) as info:
        verify(proof, htm="POST", htu=HTU, now=NOW)
    assert info.value.reason is Reason.BAD_SIGNATURE


class _BadJWKSigner(RawECSigner):
    def __init__(self, jwk: Mapping[str, str], alg: str = "ES256") -> None:
        super().__init__(alg=alg)
        self._jwk = jwk

    @property
    def public_jwk(self) -> Mapping[str, str]:
        return self._jwk


def test_from_signer_refuses_unsupported_alg_and_bad_public_jwk() -> None:
    good = RawECSigner()
    with pytest.raises(ValueError):
        DPoPKey.from_signer(_BadJWKSigner(good.public_jwk, alg="HS256"))
    with pytest.raises(ValueError):
        DPoPKey.from_signer(_BadJWKSigner({**good.public_jwk, "d": "AAAA"}))
    with pytest.raises(ValueError):
        DPoPKey.from_signer(_BadJWKSigner(key_for("EdDSA").public_jwk))


def test_signer_backed_key_cannot_be_exported_or_realgorithmed() -> None:
    key = DPoPKey.from_signer(RawECSigner())
    with pytest.raises(ValueError):
        key.private_jwk()
    with pytest.raises(ValueError):
        key.to_pem()
    with pytest.raises(ValueError):
        key.with_alg("ES256")


# -- repr, pickling, equality, with_alg --------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_c23_repr_shows_no_private_material(alg: str) -> None:
    key = key_for(alg)
    text = repr(key) + str(key)
    private = key.private_jwk()
    for name in PRIVATE_JWK_MEMBERS & private.keys():
        assert private[name] not in text
    assert key.jkt in text


def test_repr_of_signer_key_says_signer() -> None:
    key = DPoPKey.from_signer(RawECSigner())
    assert "signer" in repr(key)


def test_c23_pickling_and_copying_are_refused() -> None:
    key = key_for("ES256")
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.copy(key)


def test_equality_and_hash_follow_jkt_and_alg() -> None:
    key = key_for("EdDSA")
    same = DPoPKey.from_jwk(key.private_jwk())
    other = DPoPKey.generate("EdDSA")
    assert key == same
    assert hash(key) == hash(same)
    assert key != other
    assert key != key.with_alg("Ed25519")
    assert key != key.jkt
    assert len({key, same, other}) == 2


def test_with_alg_keeps_the_key_and_changes_the_alg() -> None:
    ed = key_for("EdDSA")
    ed2 = ed.with_alg("Ed25519")
    assert (ed2.alg, ed2.jkt) == ("Ed25519", ed.jkt)
    assert json_loads_object(b64url_decode(ed2.proof_header_b64))["alg"] == "Ed25519"
    rsa_key = key_for("PS256")
    for alg in ("RS256", "PS512", "RS384"):
        other = rsa_key.with_alg(alg)
        assert other.alg == alg
        assert other.jkt == rsa_key.jkt
        assert signature_verifies(other, b"x", other.sign(b"x"))
    with pytest.raises(ValueError):
        rsa_key.with_alg("ES256")
    with pytest.raises(ValueError):
        ed.with_alg("HS256")


def test_public_jwk_is_a_fresh_copy() -> None:
    key = key_for("ES256")
    jwk = key.public_jwk
    jwk["x"] = "tampered"
    assert key.public_jwk["x"] != "tampered"
    assert isinstance(json.dumps(jwk), str)


def test_rsa_private_numbers_survive_the_round_trip() -> None:
    key = key_for("RS256")
    exported = key.private_jwk()
    assert {"n", "e", "d", "p", "q", "dp", "dq", "qi"} <= exported.keys()
    assert DPoPKey.from_jwk(exported).private_jwk() == exported


def test_repr_never_shows_an_access_token_the_key_was_used_with() -> None:
    key = DPoPKey.generate("ES256")
    token = "secret-access-token-4f2a"
    proof = create_proof(key, htm="GET", htu=HTU, access_token=token, now=NOW)
    assert verify(proof, htm="GET", htu=HTU, access_token=token, now=NOW).jkt == key.jkt
    assert token not in repr(key)
    # A proof for another token carries that token's ath, not the previous one's.
    other = create_proof(key, htm="GET", htu=HTU, access_token="other-token", now=NOW)
    with pytest.raises(InvalidProofError) as info:
        verify(other, htm="GET", htu=HTU, access_token=token, now=NOW)
    assert info.value.reason is Reason.ATH_MISMATCH
