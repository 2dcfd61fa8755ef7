"""The strict compact-JWS layer (RFC 7515, RFC 7517, RFC 7518).

Checklist: P-3 (asymmetric only), P-4 (public JWK only), P-14 (raw R||S), X-13 adjacent
JSON rules; attacks on JOSE parsing (duplicate members, non-canonical base64, crit).
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dpopkit import ALGORITHMS, DPoPKey, InvalidProofError, Reason, create_proof, verify_proof
from dpopkit.core.algorithms import AlgSpec, spec_for
from dpopkit.core.jws import (
    PRIVATE_JWK_MEMBERS,
    CompactJWS,
    JWSError,
    algorithm_spec,
    b64url_decode,
    b64url_encode,
    check_crit,
    json_dumps,
    json_loads_object,
    public_key_from_jwk,
    sign_compact,
    split_compact,
)

NOW = 1_700_000_000.0
HTU = "https://server.example.com/token"


@cache
def key_for(alg: str) -> DPoPKey:
    return DPoPKey.generate(alg)


def spec(alg: str) -> AlgSpec:
    found = spec_for(alg)
    assert found is not None
    return found


def reason_of(exc: pytest.ExceptionInfo[JWSError]) -> Reason:
    return exc.value.reason


# -- base64url ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", b"abc", b"\xfb\xff\xbf" * 7])
def test_b64url_round_trip_without_padding(data: bytes) -> None:
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert "+" not in encoded
    assert "/" not in encoded
    assert encoded == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert b64url_decode(encoded) == data


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("AA==", id="padding"),
        pytest.param("AAA=", id="padding-one"),
        pytest.param("+/+/", id="standard-alphabet"),
        pytest.param("ab+c", id="plus"),
        pytest.param("ab/c", id="slash"),
        pytest.param("A", id="impossible-length"),
        pytest.param("AAAAA", id="impossible-length-5"),
        pytest.param("AB", id="non-canonical-2"),
        pytest.param("AAB", id="non-canonical-3"),
        pytest.param("_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-1"),
        pytest.param("AA\n", id="newline"),
        pytest.param("A A=", id="space"),
        pytest.param("AAé", id="non-ascii"),
        pytest.param("AA.A", id="dot"),
        pytest.param("AA\x00A", id="nul"),
    ],
)
def test_b64url_decode_is_strict(value: str) -> None:
    with pytest.raises(JWSError) as info:
        b64url_decode(value)
    assert reason_of(info) is Reason.MALFORMED


def test_b64url_canonical_trailing_bits() -> None:
    # RFC 4648 §3.5: unused bits of the last character must be zero.
    assert b64url_decode("AA") == b"\x00"
    assert b64url_decode("AQ") == b"\x01"
    assert b64url_decode("AAA") == b"\x00\x00"
    assert b64url_decode("AAE") == b"\x00\x01"
    for last in "BCDEFGHIJKLMNOP":
        with pytest.raises(JWSError):
            b64url_decode("A" + last)


# -- strict JSON -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b'{"a":1}', b' {"a":1}', b'{"a":1} \n', b'\t\r\n{"a" : 1 }\r\n'])
def test_json_insignificant_whitespace_is_allowed(data: bytes) -> None:
    # RFC 8259 §2: whitespace around the object and its tokens.
    assert json_loads_object(data) == {"a": 1}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{}", {}),
        (b'{"a":"x,y"}', {"a": "x,y"}),
        (b'{"a":"x,y","b":"{[,"}', {"a": "x,y", "b": "{[,"}),
        (b'{"a":1,"b":2,"c":3}', {"a": 1, "b": 2, "c": 3}),
        (b'{"a":"\\u00e9"}', {"a": "é"}),
    ],
)
def test_json_objects_with_commas_and_brackets_in_strings(data: bytes, expected: object) -> None:
    assert json_loads_object(data) == expected


def test_json_object_parses() -> None:
    assert json_loads_object(b'{"a":1,"b":[1.5,"x",null,true],"c":{"d":"\xc3\xa9"}}') == {
        "a": 1,
        "b": [1.5, "x", None, True],
        "c": {"d": "é"},
    }


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"a":1,"a":2}', id="duplicate-member"),
        pytest.param(b'{"a":{"b":1,"b":1}}', id="nested-duplicate"),
        pytest.param(b'{"a":"x,y","a":1}', id="duplicate-with-comma-in-string"),
        pytest.param(b'{"a":"x,y,z","b":2,"a":3}', id="duplicate-hidden-by-commas"),
        pytest.param(b'{"a":"{","a":1}', id="duplicate-with-brace-in-string"),
        pytest.param(b'{"a":"[","a":1}', id="duplicate-with-bracket-in-string"),
        pytest.param(b'{"a":1,"\\u0061":2}', id="duplicate-via-escape"),
        pytest.param(b'{"a":[{"b":1,"b":1}]}', id="duplicate-in-array"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":Infinity}', id="infinity"),
        pytest.param(b'{"a":-Infinity}', id="minus-infinity"),
        pytest.param(b'{"a":1e400}', id="overflow"),
        pytest.param(b'{"a":-1e400}', id="negative-overflow"),
        pytest.param(b"[1,2]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"1", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"a":1', id="truncated"),
        pytest.param(b"{", id="open-brace"),
        pytest.param(b'{"a"', id="no-colon"),
        pytest.param(b"{}{}", id="two-objects"),
        pytest.param(b'{"a":1}\x00', id="trailing-nul"),
        pytest.param(b'{"a":1}\xc2\xa0', id="trailing-nbsp"),
        pytest.param(b'{"a":1} x', id="trailing-junk"),
        pytest.param(b'{"a":"\xff"}', id="invalid-utf8"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', id="bom"),
        pytest.param(b'{"a":"\\ud800"}', id="lone-surrogate-value"),
        pytest.param(b'{"\\udfff":1}', id="lone-surrogate-key"),
        pytest.param(b'{"a":["\\ud800"]}', id="lone-surrogate-in-array"),
        pytest.param(b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", id="too-deep"),
        pytest.param(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="recursion"),
    ],
)
def test_strict_json_refuses(data: bytes) -> None:
    with pytest.raises(JWSError) as info:
        json_loads_object(data)
    assert reason_of(info) is Reason.MALFORMED


def test_json_dumps_is_compact_and_refuses_non_finite() -> None:
    assert json_dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()
    with pytest.raises(ValueError):
        json_dumps({"a": float("nan")})


# -- JWK import --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_public_jwk_import_for_every_algorithm(alg: str) -> None:
    key = key_for(alg)
    public = public_key_from_jwk(
        {**key.public_jwk, "alg": alg, "use": "sig", "kid": "1"}, spec(alg)
    )
    assert spec(alg).verify(public, key.sign(b"x"), b"x")


@pytest.mark.parametrize("member", sorted(PRIVATE_JWK_MEMBERS))
def test_p4_private_members_refused(member: str) -> None:
    jwk = {**key_for("ES256").public_jwk, member: "AAAA"}
    with pytest.raises(JWSError) as info:
        public_key_from_jwk(jwk, spec("ES256"))
    assert reason_of(info) is Reason.PRIVATE_JWK


def _es256_jwk(**changes: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = dict(key_for("ES256").public_jwk)
    for name, value in changes.items():
        if value is None:
            jwk.pop(name, None)
        else:
            jwk[name] = value
    return jwk


def _off_curve_point() -> dict[str, Any]:
    jwk = _es256_jwk()
    y = bytearray(b64url_decode(jwk["y"]))
    y[-1] ^= 1
    jwk["y"] = b64url_encode(bytes(y))
    return jwk


@pytest.mark.parametrize(
    ("jwk", "alg"),
    [
        pytest.param(["kty", "EC"], "ES256", id="not-an-object"),
        pytest.param("EC", "ES256", id="string"),
        pytest.param(_es256_jwk(kty="RSA"), "ES256", id="kty-mismatch"),
        pytest.param(_es256_jwk(kty=None), "ES256", id="kty-missing"),
        pytest.param(_es256_jwk(kty="oct"), "ES256", id="kty-oct"),
        pytest.param(_es256_jwk(alg="ES384"), "ES256", id="jwk-alg-mismatch"),
        pytest.param(_es256_jwk(use="enc"), "ES256", id="use-enc"),
        pytest.param(_es256_jwk(crv="P-384"), "ES256", id="crv-mismatch"),
        pytest.param(_es256_jwk(crv=None), "ES256", id="crv-missing"),
        pytest.param(_es256_jwk(x=None), "ES256", id="x-missing"),
        pytest.param(_es256_jwk(x=5), "ES256", id="x-not-string"),
        pytest.param(_es256_jwk(y=""), "ES256", id="y-empty"),
        pytest.param(_es256_jwk(x="A" * 42 + "=="), "ES256", id="x-padded"),
        pytest.param(_es256_jwk(x="AAAA"), "ES256", id="x-short"),
        pytest.param(_es256_jwk(y="A" * 44), "ES256", id="y-long"),
        pytest.param(_off_curve_point(), "ES256", id="point-not-on-curve"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}, "ES256", id="0"),
        pytest.param({**key_for("EdDSA").public_jwk, "crv": "X25519"}, "EdDSA", id="okp-x25519"),
        pytest.param({**key_for("EdDSA").public_jwk, "x": "AAAA"}, "EdDSA", id="okp-short"),
        pytest.param(key_for("EdDSA").public_jwk, "ES256", id="okp-for-es256"),
        pytest.param(key_for("ES256").public_jwk, "EdDSA", id="ec-for-eddsa"),
        pytest.param(key_for("RS256").public_jwk, "ES256", id="rsa-for-es256"),
    ],
)
def test_jwk_import_refuses(jwk: object, alg: str) -> None:
    with pytest.raises(JWSError) as info:
        public_key_from_jwk(jwk, spec(alg))
    assert reason_of(info) is Reason.BAD_JWK


def _rsa_jwk(n: int, e: int) -> dict[str, str]:
    def enc(value: int) -> str:
        return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))

    return {"kty": "RSA", "n": enc(n), "e": enc(e)}


@cache
def rsa_1024_numbers() -> rsa.RSAPublicNumbers:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    return small.public_key().public_numbers()


def _rsa_2048_n() -> int:
    return int.from_bytes(b64url_decode(key_for("RS256").public_jwk["n"]), "big")


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param(lambda: _rsa_jwk(rsa_1024_numbers().n, 65537), id="rsa-1024"),
        pytest.param(lambda: _rsa_jwk((1 << 8200) - 1, 65537), id="rsa-8200-bits"),
        pytest.param(lambda: _rsa_jwk(_rsa_2048_n(), 65536), id="even-exponent"),
        pytest.param(lambda: _rsa_jwk(_rsa_2048_n(), 1), id="exponent-one"),
        pytest.param(lambda: _rsa_jwk(_rsa_2048_n(), (1 << 40) + 1), id="exponent-too-big"),
        pytest.param(lambda: _rsa_jwk(_rsa_2048_n() + 1, 65537), id="even-modulus"),
        pytest.param(
            lambda: {
                **_rsa_jwk(_rsa_2048_n(), 65537),
                "n": b64url_encode(b"\x00" + _rsa_2048_n().to_bytes(256, "big")),
            },
            id="n-leading-zero",
        ),
        pytest.param(
            lambda: {**_rsa_jwk(_rsa_2048_n(), 65537), "e": "AAEAAQ"}, id="e-leading-zero"
        ),
        pytest.param(lambda: {**_rsa_jwk(_rsa_2048_n(), 65537), "e": None}, id="e-null"),
    ],
)
def test_rsa_jwk_import_refuses(jwk: Any) -> None:
    with pytest.raises(JWSError) as info:
        public_key_from_jwk(jwk(), spec("RS256"))
    assert reason_of(info) is Reason.BAD_JWK


def test_rsa_size_limits_are_parameters() -> None:
    jwk = key_for("RS256").public_jwk
    public_key_from_jwk(jwk, spec("RS256"), min_rsa_bits=2048, max_rsa_bits=2048)
    with pytest.raises(JWSError):
        public_key_from_jwk(jwk, spec("RS256"), min_rsa_bits=3072)
    with pytest.raises(JWSError):
        public_key_from_jwk(jwk, spec("RS256"), min_rsa_bits=1024, max_rsa_bits=1024)


# -- compact serialization ---------------------------------------------------------------


def test_split_compact_returns_three_segments() -> None:
    parts = split_compact("a.b.c", max_length=100)
    assert parts == CompactJWS("a", "b", "c")
    assert parts.signing_input == b"a.b"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (b"a.b.c", Reason.MALFORMED),
        (None, Reason.MALFORMED),
        ("a.b", Reason.MALFORMED),
        ("a.b.c.d", Reason.MALFORMED),
        ("a..c", Reason.MALFORMED),
        (".b.c", Reason.MALFORMED),
        ("a.b.", Reason.MALFORMED),
        ("", Reason.MALFORMED),
        ("a.b." + "c" * 100, Reason.TOO_LARGE),
    ],
)
def test_split_compact_refuses(token: object, reason: Reason) -> None:
    with pytest.raises(JWSError) as info:
        split_compact(token, max_length=100)
    assert reason_of(info) is reason


def test_size_checked_before_any_decoding() -> None:
    # A huge value made of characters that are not even base64url is refused as too large.
    with pytest.raises(JWSError) as info:
        split_compact("\x00" * 10_000, max_length=8192)
    assert reason_of(info) is Reason.TOO_LARGE


@pytest.mark.parametrize(
    "header",
    [
        {"crit": "exp"},
        {"crit": []},
        {"crit": ["ext"]},
        {"crit": ["ext", "ext"], "ext": 1},
        {"crit": [1]},
        {"crit": [["ext"]]},
        {"crit": ["ext"], "other": 1},
    ],
)
def test_crit_refused_unless_understood_and_present(header: dict[str, Any]) -> None:
    with pytest.raises(JWSError) as info:
        check_crit(header, understood={"ext"})
    assert reason_of(info) is Reason.UNSUPPORTED_CRIT


def test_crit_absent_or_understood_passes() -> None:
    check_crit({"alg": "ES256"})
    check_crit({"crit": ["ext"], "ext": True}, understood={"ext"})


def test_crit_in_a_proof_is_refused() -> None:
    key = key_for("ES256")
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk, "crit": ["exp"], "exp": 1}
    payload = {"jti": "j" * 22, "htm": "GET", "htu": HTU, "iat": int(NOW)}
    header_b64 = b64url_encode(json_dumps(header))
    proof = sign_compact(header_b64, payload, spec("ES256"), key.sign)
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, htm="GET", htu=HTU, now=NOW)
    assert info.value.reason is Reason.UNSUPPORTED_CRIT


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_sign_compact_produces_a_verifiable_jws(alg: str) -> None:
    key = key_for(alg)
    header_b64 = b64url_encode(json_dumps({"alg": alg}))
    token = sign_compact(header_b64, {"a": 1}, spec(alg), key.sign)
    parts = split_compact(token, max_length=10_000)
    public = public_key_from_jwk(key.public_jwk, spec(alg))
    assert spec(alg).verify(public, b64url_decode(parts.signature_b64), parts.signing_input)
    assert json_loads_object(b64url_decode(parts.payload_b64)) == {"a": 1}


@pytest.mark.parametrize(
    "alg", ["none", "HS256", "HS512", "ES256K", "RSA1_5", 256, None, ["ES256"]]
)
def test_p3_algorithm_spec_refuses_none_mac_and_unknown(alg: object) -> None:
    with pytest.raises(JWSError) as info:
        algorithm_spec(alg, ALGORITHMS)
    assert reason_of(info) is Reason.UNSUPPORTED_ALG


def test_algorithm_spec_honours_the_allow_list() -> None:
    assert algorithm_spec("ES256", {"ES256"}).name == "ES256"
    with pytest.raises(JWSError):
        algorithm_spec("RS256", {"ES256"})


# -- AlgSpec.verify never raises --------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_p14_der_and_wrong_length_ecdsa_signatures_do_not_verify(alg: str) -> None:
    key = key_for(alg)
    s = spec(alg)
    public = public_key_from_jwk(key.public_jwk, s)
    raw = key.sign(b"data")
    assert s.verify(public, raw, b"data")
    size = len(raw) // 2
    r = int.from_bytes(raw[:size], "big")
    sv = int.from_bytes(raw[size:], "big")
    der = encode_dss_signature(r, sv)
    assert not s.verify(public, der, b"data")
    assert not s.verify(public, raw[:-1], b"data")
    assert not s.verify(public, raw + b"\x00", b"data")
    assert not s.verify(public, b"\x00" * len(raw), b"data")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_p14_raw_and_der_convert_for_every_shape_of_r_and_s(alg: str) -> None:
    """RFC 7518 §3.4: R‖S ↔ DER for halves with the top bit set or clear and with leading
    zero octets (shorter DER INTEGERs), checked against cryptography's own DER both ways."""
    key = key_for(alg)
    s = spec(alg)
    public = public_key_from_jwk(key.public_jwk, s)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    size = s.coord_size
    # P-521's 66-octet halves start with 0x00 or 0x01: their top bit is never set.
    wanted = 4 if alg == "ES512" else 6
    shapes: set[tuple[int, int]] = set()
    for i in range(3000):
        data = i.to_bytes(4, "big")
        raw = key.sign(data)  # DER → R‖S in dpopkit
        assert len(raw) == 2 * size
        halves = raw[:size], raw[size:]
        der = encode_dss_signature(*(int.from_bytes(h, "big") for h in halves))
        public.verify(der, data, ec.ECDSA(s.hash_alg))  # type: ignore[arg-type]
        assert s.verify(public, raw, data)  # R‖S → DER in dpopkit
        assert not s.verify(public, raw, data + b"!")
        shapes |= {(0 if h[0] == 0 else 1 + (h[0] >> 7), n) for n, h in enumerate(halves)}
        if len(shapes) == wanted and i >= 300:
            break
    assert len(shapes) == wanted  # each half: a leading zero octet, top bit clear, top bit set


@pytest.mark.parametrize("alg", ["EdDSA", "RS256", "PS256"])
def test_wrong_length_or_bad_signatures_do_not_verify(alg: str) -> None:
    key = key_for(alg)
    s = spec(alg)
    public = public_key_from_jwk(key.public_jwk, s)
    signature = key.sign(b"data")
    assert not s.verify(public, signature[:-1], b"data")
    assert not s.verify(public, signature + b"\x00", b"data")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not s.verify(public, flipped, b"data")
    assert not s.verify(public, signature, b"other data")


def test_pss_uses_hash_length_salt() -> None:
    # RFC 7518 §3.5: a PSS signature with another salt length must not verify.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = DPoPKey.from_private_key(private, alg="PS256")
    s = spec("PS256")
    other_salt = private.sign(
        b"data", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=0), hashes.SHA256()
    )
    public = public_key_from_jwk(key.public_jwk, s)
    assert not s.verify(public, other_salt, b"data")
    assert s.verify(public, key.sign(b"data"), b"data")


def test_ec_key_for_another_curve_is_never_imported_for_es512() -> None:
    p384 = DPoPKey.from_private_key(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(JWSError):
        public_key_from_jwk(p384.public_jwk, spec("ES512"))


def test_duplicate_member_in_a_proof_payload_is_malformed() -> None:
    key = key_for("ES256")
    payload_json = (
        '{"jti":"aaaaaaaaaaaaaaaaaaaaaa","htm":"GET","htm":"POST",'
        f'"htu":"{HTU}","iat":{int(NOW)}}}'
    )
    signing_input = f"{key.proof_header_b64}.{b64url_encode(payload_json.encode())}"
    proof = f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"
    with pytest.raises(InvalidProofError) as info:
        verify_proof(proof, htm="GET", htu=HTU, now=NOW)
    assert info.value.reason is Reason.MALFORMED
    assert json.loads(payload_json)["htm"] == "POST"  # what a lax parser would have seen


def test_a_valid_proof_passes_through_this_layer() -> None:
    key = key_for("ES256")
    proof = create_proof(key, htm="GET", htu=HTU, now=NOW)
    assert verify_proof(proof, htm="GET", htu=HTU, now=NOW).jkt == key.jkt
