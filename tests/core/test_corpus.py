"""The labelled proof corpus (``tests/vectors/proofs_invalid.json``), Wycheproof style.

Each case is ``{id, family, comment, key, recipe, request, result, reason, error}``.
The proof is built at run time from the recipe: a freshly signed proof whose
header, payload, encoding and signature are mutated as the recipe says, then
presented to :func:`verify_proof` (through :func:`extract_proof` when the case
gives request header fields). Invalid cases must fail with exactly ``reason`` and
the exception class ``error``; valid ones must verify. Families are listed
in docs/security.md, "Proof corpus families" (A header handling, B JWS structure, C typ/alg, D jwk,
E signatures, F claims, G ath/key binding, H htu, I replay, J nonces, L sizes).

Recipe operations, applied in this order:

``key``                   which key signs (see :func:`case_key`).
``header_set/_del``       set / delete protected-header members (JSON values).
``jwk_set/_del``          set / delete members of the header ``jwk``.
``jwk_mutate``            ``{member, op}``: ``increment`` (point off the curve),
                          ``truncate`` (one octet short), ``prepend_zero``.
``header_fill``           ``{name, length}``: a string member of that length.
``payload_set/_del``      set / delete claims (defaults: jti, htm, htu, iat, ath).
``payload_fill``          as ``header_fill`` for the payload.
``iat_offset``            ``iat`` = now + offset.
``nonce_edit``            ``truncate``, ``append_pad`` or ``flip`` the (expanded) nonce.
``header_raw``            replace the header JSON text (placeholders ``$JWK $ALG``, and
                          ``$JWK_RFC_ORDER``: the jwk members ordered kty, x, y, crv).
``payload_raw``           replace the payload JSON text (``$JTI $HTM $HTU $IAT``).
``header_encoding`` /
``payload_encoding``      how the JSON text becomes bytes (default ``utf-8``).
``segment_edits``         ``[{segment: 0|1|2, op, ...}]`` on the base64url text:
                          ``append``/``prepend`` (``value``), ``set_char``
                          (``index``, ``char``), ``noncanonical_tail``.
``sign``                  ``{by, over, then}``: ``by`` a key name, ``self`` (default) or
                          ``hmac`` (HS256 with the jwk ``k``); ``over: other_claims``
                          signs ``{}`` instead of the payload; ``then`` signature
                          transformations (``der``, ``zero``, ``r_s_order``, ``high_s``,
                          ``truncate``, ``append_zero``, ``flip_bit``, ``ed_s_plus_l``,
                          ``pkcs1v15``).
``compact``               template over ``{h}``, ``{p}``, ``{s}`` (default ``{h}.{p}.{s}``).

String values ``$NONCE``, ``$NONCE_STALE``, ``$NONCE_FUTURE``, ``$NONCE_OTHER``,
``$RSA_N_<bits>`` and ``$JKT``/``$OTHER_JKT`` (in ``request.expected_jkt``) are
expanded when the proof is built.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dpopkit import (
    ALGORITHMS,
    DPoPError,
    DPoPKey,
    Headers,
    InvalidProofError,
    NonceIssuer,
    ProofPolicy,
    Reason,
    UseNonceError,
    VerifiedProof,
    access_token_hash,
    extract_proof,
    jwk_thumbprint,
    record_proof,
    verify_proof,
)
from dpopkit.core.jws import b64url_decode, b64url_encode
from dpopkit.storage.memory import MemoryReplayCache

CORPUS_PATH = Path(__file__).parent.parent / "vectors" / "proofs_invalid.json"
CORPUS: dict[str, Any] = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = CORPUS["cases"]

NOW = 1_700_000_000.0
DEFAULT_HTM = "POST"
DEFAULT_HTU = "https://server.example.com/token"
NONCE_SECRET = b"n" * 32
OTHER_NONCE_SECRET = b"o" * 32
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493
ERRORS: dict[str, type[DPoPError]] = {
    "InvalidProofError": InvalidProofError,
    "UseNonceError": UseNonceError,
}


@dataclass(frozen=True)
class CaseKey:
    """A signing key for the corpus: any alg, including ones dpopkit refuses to make."""

    alg: str
    jwk: dict[str, str]
    sign: Callable[[bytes], bytes]
    rsa_private: rsa.RSAPrivateKey | None = None


def _rsa_key(bits: int) -> CaseKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url_encode(numbers.e.to_bytes(3, "big")),
    }

    def sign(data: bytes) -> bytes:
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return CaseKey("RS256", jwk, sign, private)


@functools.cache
def case_key(name: str) -> CaseKey:
    """Keys by name: an algorithm (``ES256``), a second key of it (``ES256#2``),
    ``RSA1024``/``RSA2040`` (too small, made with cryptography directly) or
    ``ED25519_IDENTITY`` (the small-order identity point, which "signs" anything)."""
    if name in ("RSA1024", "RSA2040"):
        return _rsa_key(int(name[3:]))
    if name == "ED25519_IDENTITY":
        identity = b"\x01" + bytes(31)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(identity)}
        return CaseKey("EdDSA", jwk, lambda data: identity + bytes(32))
    alg = name.split("#")[0]
    assert alg in ALGORITHMS, name
    key = DPoPKey.generate(alg)
    private = None
    if key.alg.startswith(("RS", "PS")):
        private = _private_rsa(key)
    return CaseKey(key.alg, key.public_jwk, key.sign, private)


def _private_rsa(key: DPoPKey) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    loaded = load_pem_private_key(key.to_pem(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded


@functools.cache
def nonces() -> dict[str, str]:
    issuer = NonceIssuer([NONCE_SECRET])
    other = NonceIssuer([OTHER_NONCE_SECRET])
    return {
        "$NONCE": issuer.issue(now=NOW),
        "$NONCE_STALE": issuer.issue(now=NOW - 600),
        "$NONCE_FUTURE": issuer.issue(now=NOW + 600),
        "$NONCE_OTHER": other.issue(now=NOW),
    }


def _expand(value: Any) -> Any:
    """Expand ``$`` placeholders inside recipe values."""
    if isinstance(value, str):
        if value in nonces():
            return nonces()[value]
        if value.startswith("$RSA_N_"):
            bits = int(value.removeprefix("$RSA_N_"))
            n = (1 << (bits - 1)) | secrets.randbits(bits - 2) << 1 | 1
            return b64url_encode(n.to_bytes((bits + 7) // 8, "big"))
        return value
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _mutate_member(raw: str, op: str) -> str:
    data = b64url_decode(raw)
    if op == "increment":
        size = len(data)
        return b64url_encode(
            ((int.from_bytes(data, "big") + 1) % (1 << (8 * size))).to_bytes(size, "big")
        )
    if op == "truncate":
        return b64url_encode(data[1:])
    if op == "prepend_zero":
        return b64url_encode(b"\x00" + data)
    raise AssertionError(f"unknown jwk_mutate op {op}")


def _encode_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _noncanonical(segment: str) -> str:
    """Make the unused low bits of the last character non-zero (RFC 4648 §3.5)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rem = len(segment) % 4
    assert rem in (2, 3), "segment has no unused bits"
    index = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[index + 1]


def _to_bytes_for_tail(text: str, encoding: str) -> bytes:
    data = text.encode(encoding)
    while len(data) % 3 != 1:  # trailing JSON whitespace; leaves unused bits in the last char
        data += b" "
    return data


def _transform_signature(sig: bytes, ops: list[Any], key: CaseKey, signing_input: bytes) -> bytes:
    for op in ops:
        name = op if isinstance(op, str) else op["op"]
        if name == "der":
            half = len(sig) // 2
            r, s = int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big")
            sig = encode_dss_signature(r, s)
        elif name == "zero":
            sig = bytes(len(sig))
        elif name == "zero_s":
            sig = sig[: len(sig) // 2] + bytes(len(sig) // 2)
        elif name == "r_s_order":
            sig = P256_ORDER.to_bytes(32, "big") * 2
        elif name == "high_s":
            low_s = int.from_bytes(sig[32:], "big")
            sig = sig[:32] + (P256_ORDER - low_s).to_bytes(32, "big")
        elif name == "truncate":
            sig = sig[: -int(op.get("by", 1))]
        elif name == "append_zero":
            sig = sig + b"\x00"
        elif name == "flip_bit":
            index = int(op.get("index", 0))
            sig = sig[:index] + bytes([sig[index] ^ 0x01]) + sig[index + 1 :]
        elif name == "ed_s_plus_l":
            s = int.from_bytes(sig[32:], "little") + ED25519_ORDER
            sig = sig[:32] + s.to_bytes(32, "little")
        elif name == "pkcs1v15":  # RS256 padding under a PS256 header (alg confusion)
            assert key.rsa_private is not None
            sig = key.rsa_private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AssertionError(f"unknown signature op {name}")
    return sig


def build_proof(
    recipe: dict[str, Any], key_name: str, request: dict[str, Any], now: float
) -> tuple[str, CaseKey]:
    """Sign a fresh proof for ``request`` and apply ``recipe`` to it."""
    recipe = _expand(recipe)
    key = case_key(recipe.get("key", key_name))
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": dict(key.jwk)}
    for name, value in recipe.get("header_set", {}).items():
        header[name] = value
    for name in recipe.get("header_del", []):
        header.pop(name, None)
    jwk = header.get("jwk")
    if isinstance(jwk, dict):
        jwk.update(recipe.get("jwk_set", {}))
        for name in recipe.get("jwk_del", []):
            jwk.pop(name, None)
        if "jwk_mutate" in recipe:
            member = recipe["jwk_mutate"]["member"]
            jwk[member] = _mutate_member(jwk[member], recipe["jwk_mutate"]["op"])
    if "header_fill" in recipe:
        header[recipe["header_fill"]["name"]] = "A" * int(recipe["header_fill"]["length"])

    htm = request.get("htm", DEFAULT_HTM)
    htu = request.get("htu", DEFAULT_HTU)
    jti = secrets.token_urlsafe(16)
    payload: dict[str, Any] = {
        "jti": jti,
        "htm": htm,
        "htu": htu,
        "iat": int(now),
    }
    if request.get("access_token") is not None:
        payload["ath"] = access_token_hash(request["access_token"])
    if "iat_offset" in recipe:
        payload["iat"] = int(now) + recipe["iat_offset"]
    for name, value in recipe.get("payload_set", {}).items():
        payload[name] = value
    for name in recipe.get("payload_del", []):
        payload.pop(name, None)
    if "payload_fill" in recipe:
        payload[recipe["payload_fill"]["name"]] = "A" * int(recipe["payload_fill"]["length"])
    if "nonce_edit" in recipe:
        nonce = payload["nonce"]
        payload["nonce"] = {
            "truncate": nonce[:-1],
            "append_pad": nonce + "=",
            "flip": ("B" if nonce[0] == "A" else "A") + nonce[1:],
        }[recipe["nonce_edit"]]

    header_text = recipe.get("header_raw") or _encode_json(header)
    rfc_order: dict[str, Any] = {n: key.jwk[n] for n in ("kty", "x", "y", "crv") if n in key.jwk}
    header_text = header_text.replace("$JWK_RFC_ORDER", _encode_json(rfc_order))
    header_text = header_text.replace("$JWK", _encode_json(key.jwk))
    header_text = header_text.replace("$ALG", json.dumps(key.alg))
    payload_text = recipe.get("payload_raw") or _encode_json(payload)
    for token, text in (
        ("$JTI", json.dumps(jti)),
        ("$HTM", json.dumps(htm)),
        ("$HTU", json.dumps(htu)),
        ("$IAT", str(int(now))),
    ):
        payload_text = payload_text.replace(token, text)

    edits: list[dict[str, Any]] = recipe.get("segment_edits", [])
    tails = {e["segment"] for e in edits if e["op"] == "noncanonical_tail"}
    h_enc = recipe.get("header_encoding", "utf-8")
    p_enc = recipe.get("payload_encoding", "utf-8")
    h_bytes = _to_bytes_for_tail(header_text, h_enc) if 0 in tails else header_text.encode(h_enc)
    p_bytes = _to_bytes_for_tail(payload_text, p_enc) if 1 in tails else payload_text.encode(p_enc)
    segments = [b64url_encode(h_bytes), b64url_encode(p_bytes), ""]

    def edit(index: int) -> None:
        for e in edits:
            if e["segment"] != index:
                continue
            seg = segments[index]
            if e["op"] == "append":
                seg += e["value"]
            elif e["op"] == "prepend":
                seg = e["value"] + seg
            elif e["op"] == "set_char":
                i = int(e["index"])
                seg = seg[:i] + e["char"] + seg[i + 1 :]
            elif e["op"] == "noncanonical_tail":
                seg = _noncanonical(seg)
            else:
                raise AssertionError(f"unknown segment op {e['op']}")
            assert seg != segments[index], "a segment edit must change the segment"
            segments[index] = seg

    edit(0)
    edit(1)
    signing_input = f"{segments[0]}.{segments[1]}".encode()
    sign = recipe.get("sign", {})
    by = sign.get("by", "self")
    if sign.get("over") == "other_claims":  # a real signature, but over other claims
        signing_input = f"{segments[0]}.{b64url_encode(b'{}')}".encode()
    if by == "self":
        signature = key.sign(signing_input)
    elif by == "hmac":
        secret = b64url_decode(header["jwk"]["k"])
        signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    else:
        signature = case_key(by).sign(signing_input)
    signature = _transform_signature(signature, sign.get("then", []), key, signing_input)
    segments[2] = b64url_encode(signature)
    edit(2)
    template: str = recipe.get("compact", "{h}.{p}.{s}")
    proof = template.replace("{h}", segments[0]).replace("{p}", segments[1])
    return proof.replace("{s}", segments[2]), key


def _policy(request: dict[str, Any]) -> ProofPolicy:
    settings = dict(request.get("policy", {}))
    if "algorithms" in settings:
        settings["algorithms"] = frozenset(settings["algorithms"])
    return ProofPolicy(**settings)


def run_case(case: dict[str, Any]) -> VerifiedProof:
    """Build and present the case's proof(s); return the last verification result."""
    request: dict[str, Any] = case["request"]
    now = NOW + request.get("now_offset", 0)
    issuer = NonceIssuer([NONCE_SECRET]) if request.get("nonce_issuer") else None
    policy = _policy(request)
    proof, key = build_proof(case["recipe"], case.get("key", "ES256"), request, NOW)
    expected_jkt = request.get("expected_jkt")
    if expected_jkt == "$JKT":
        expected_jkt = jwk_thumbprint(key.jwk)
    elif expected_jkt == "$OTHER_JKT":
        expected_jkt = jwk_thumbprint(case_key("ES256#2").jwk)

    def present(value: str, at: float) -> VerifiedProof:
        if "headers" in request:
            fields = [(n, v.replace("{proof}", value)) for n, v in request["headers"]]
            value = extract_proof(Headers(fields))
        return verify_proof(
            value,
            htm=request.get("htm", DEFAULT_HTM),
            htu=request.get("request_htu", request.get("htu", DEFAULT_HTU)),
            policy=policy,
            access_token=request.get("present_token", request.get("access_token")),
            expected_jkt=expected_jkt,
            nonce_check=issuer,
            now=at,
        )

    result = present(proof, now)
    assert result.jkt == jwk_thumbprint(key.jwk)
    replay = request.get("replay")
    if replay is None:
        return result
    cache = MemoryReplayCache()
    record_proof(cache, result, now=now)
    later = now + replay.get("delay", 0)
    second = proof
    if "recipe" in replay:
        second, _ = build_proof(replay["recipe"], case.get("key", "ES256"), request, NOW)
    again = present(second, later)
    record_proof(cache, again, now=later)
    return again


def test_corpus_shape() -> None:
    """Ids are unique; every case names a family, a comment and its expected outcome."""
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids))
    reasons = {r.value for r in Reason}
    for case in CASES:
        assert case["family"] in "ABCDEFGHIJL"
        assert case["comment"]
        assert case["result"] in ("valid", "invalid")
        if case["result"] == "invalid":
            assert case["reason"] in reasons
            assert case["error"] in ERRORS
    families = {case["family"] for case in CASES}
    assert families == set("ABCDEFGHIJL")
    assert sum(case["result"] == "invalid" for case in CASES) >= 120


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_corpus_case(case: dict[str, Any]) -> None:
    """Each corpus case fails with its labelled reason (or verifies when ``valid``)."""
    if case["result"] == "valid":
        verified = run_case(case)
        assert verified.replay_key.startswith("dpopkit:jti:")
        return
    error = ERRORS[case["error"]]
    with pytest.raises(error) as info:
        run_case(case)
    assert type(info.value) is error
    assert info.value.reason == case["reason"]
    if isinstance(info.value, UseNonceError):
        # The challenge carries a fresh nonce this server accepts.
        NonceIssuer([NONCE_SECRET]).verify(info.value.nonce, now=NOW)
