"""Totality: whatever a peer sends, only ``DPoPError`` subclasses escape.

No ``KeyError``, ``IndexError``, ``TypeError``, ``UnicodeDecodeError``,
``OverflowError`` or ``RecursionError`` may leak out of ``verify_proof`` or
``extract_proof``, or a server would answer 500 instead of 400/401.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from dpopkit import (
    DPoPError,
    Headers,
    NonceIssuer,
    ProofPolicy,
    VerifiedProof,
    extract_proof,
    verify_proof,
)
from dpopkit.core.jws import b64url_encode

from .strategies import ALL_ALGS, PROPERTY, json_values, key_for, methods, nonces, tokens, urls

T0 = 1_700_000_000
HTU = "https://server.example.com/token"
NONCE_ISSUER = NonceIssuer([b"n" * 32], context="as")
POLICIES = [
    ProofPolicy(),
    ProofPolicy(require_nonce=True),
    ProofPolicy(nonce_carries_freshness=False, algorithms=frozenset({"ES256", "EdDSA"})),
    ProofPolicy(max_proof_length=600, max_header_length=200, max_jti_length=16),
]
KEYS = ["ES256", "ES384", "ES512", "EdDSA", "Ed25519", "PS256", "RS256"]


def verify_totally(proof: Any, **kwargs: Any) -> VerifiedProof | None:
    """Return the result, or None when a DPoPError was raised; anything else propagates."""
    try:
        result = verify_proof(proof, **kwargs)
    except DPoPError as exc:
        event(f"{type(exc).__name__}: {exc.reason.value}")
        return None
    event("valid")
    return result


@settings(PROPERTY, max_examples=200)
@given(proof=st.text(), htm=methods, htu=st.text() | urls)
def test_arbitrary_text(proof: str, htm: str, htu: str) -> None:
    verify_totally(proof, htm=htm, htu=htu, now=T0)


@settings(PROPERTY, max_examples=200)
@given(
    segments=st.lists(st.binary(max_size=300), min_size=3, max_size=3),
    policy=st.sampled_from(POLICIES),
)
def test_three_segment_shapes_from_binary(segments: list[bytes], policy: ProofPolicy) -> None:
    proof = ".".join(b64url_encode(s) for s in segments)
    nonce_check = NONCE_ISSUER if policy.require_nonce else None
    verify_totally(proof, htm="POST", htu=HTU, policy=policy, nonce_check=nonce_check, now=T0)


def _encode_json(value: Any, ensure_ascii: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)
    # Lone surrogates become invalid UTF-8 here: also something a peer can send.
    return text.encode("utf-8", "surrogatepass")


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON value (so deep checks get exercised)."""
    return st.sampled_from([False] * 7 + [True]).flatmap(lambda j: json_values if j else strategy)


rarely = st.sampled_from([False] * 7 + [True])


jwk_members = st.dictionaries(
    st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "alg", "use", "k", "kid"]),
    _maybe(st.sampled_from(["EC", "OKP", "RSA", "oct", "P-256", "Ed25519", "sig", "AQAB", "AA"])),
    max_size=6,
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    alg_of_key = draw(st.sampled_from(KEYS))
    key = key_for(alg_of_key)
    jwk: Any = draw(
        st.sampled_from(["real"] * 5 + ["mutated", "members", "junk"]).flatmap(
            lambda how: {
                "real": st.just(key.public_jwk),
                "mutated": jwk_members.map(lambda extra: {**key.public_jwk, **extra}),
                "members": jwk_members,
                "junk": json_values,
            }[how]
        )
    )
    header: dict[str, Any] = {
        "typ": draw(_maybe(st.sampled_from(["dpop+jwt"] * 6 + ["application/DPoP+JWT", "JWT"]))),
        "alg": draw(_maybe(st.sampled_from([alg_of_key] * 12 + [*ALL_ALGS, "none", "HS256"]))),
        "jwk": jwk,
    }
    if draw(rarely):
        del header[draw(st.sampled_from(["typ", "alg", "jwk"]))]
    if draw(rarely):
        header["crit"] = draw(_maybe(st.lists(st.sampled_from(["exp", "b64"]), max_size=2)))
    if draw(rarely):
        header.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
    return header, alg_of_key


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "jti": draw(_maybe(st.text(min_size=1, max_size=40))),
        "htm": draw(_maybe(st.sampled_from(["POST"] * 4 + ["GET", "post"]))),
        "htu": draw(
            _maybe(st.sampled_from([HTU] * 4 + [HTU + "?q", "https://other.example/", "x"]))
        ),
        "iat": draw(
            _maybe(
                st.integers(T0 - 100, T0 + 100)
                | st.sampled_from([10**400, -(10**400), 1e308, True, "1700000000"])
            )
        ),
    }
    if draw(st.booleans()):
        payload["ath"] = draw(_maybe(tokens))
    if draw(st.booleans()):
        payload["nonce"] = draw(_maybe(nonces | st.just(NONCE_ISSUER.issue(now=T0))))
    if draw(rarely):
        del payload[draw(st.sampled_from(sorted(payload)))]
    payload.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
    return payload


@settings(PROPERTY, max_examples=300)
@given(
    header_and_alg=headers(),
    payload=payloads(),
    ensure_ascii=rarely.map(lambda r: not r),
    signature=st.sampled_from(["real"] * 4 + ["random", "empty"]),
    random_signature=st.binary(max_size=600),
    policy=st.sampled_from([POLICIES[0]] * 3 + POLICIES),
    access_token=st.none() | tokens,
    expected_jkt=st.none() | st.text(max_size=50),
)
def test_random_json_headers_and_payloads(
    header_and_alg: tuple[dict[str, Any], str],
    payload: dict[str, Any],
    ensure_ascii: bool,
    signature: str,
    random_signature: bytes,
    policy: ProofPolicy,
    access_token: str | None,
    expected_jkt: str | None,
) -> None:
    header, alg_of_key = header_and_alg
    signing_input = (
        b64url_encode(_encode_json(header, ensure_ascii))
        + "."
        + b64url_encode(_encode_json(payload, ensure_ascii))
    )
    if signature == "real":
        sig = key_for(alg_of_key).sign(signing_input.encode())
    elif signature == "random":
        sig = random_signature
    else:
        sig = b""
    proof = signing_input + "." + b64url_encode(sig)
    result = verify_totally(
        proof,
        htm="POST",
        htu=HTU,
        policy=policy,
        access_token=access_token,
        expected_jkt=expected_jkt,
        nonce_check=NONCE_ISSUER if policy.require_nonce or payload.get("nonce") else None,
        now=T0,
    )
    if result is not None:
        # Whatever passed really is a proof for this request by the key that signed it.
        assert signature == "real"
        assert result.jkt == key_for(alg_of_key).jkt
        assert result.htm == "POST"


@settings(PROPERTY, max_examples=150)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(["DPoP", "dpop", "DPOP", "Authorization"]), st.text()),
        max_size=4,
    )
)
def test_extract_proof_is_total(fields: list[tuple[str, str]]) -> None:
    try:
        value = extract_proof(Headers(fields))
    except DPoPError:
        return
    assert value in [v.strip(" \t") for k, v in fields if k.lower() == "dpop"]


@settings(PROPERTY, max_examples=300)
@given(
    alg=st.sampled_from(KEYS),
    where=st.sampled_from(["header", "payload", "jwk"]),
    name=st.sampled_from(
        [
            *("typ", "alg", "jwk", "crit", "kty", "crv", "x", "y", "n", "e", "d", "use"),
            *("jti", "htm", "htu", "iat", "ath", "nonce", "extra"),
        ]
    ),
    value=st.none() | json_values | st.sampled_from([10**400, "", "dpop+jwt", T0, "POST"]),
    delete=st.booleans(),
)
def test_one_member_of_a_valid_proof_changed(
    alg: str, where: str, name: str, value: Any, delete: bool
) -> None:
    key = key_for(alg)
    jwk: dict[str, Any] = dict(key.public_jwk)
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": jwk}
    payload: dict[str, Any] = {"jti": "j" * 22, "htm": "POST", "htu": HTU, "iat": T0}
    target = {"header": header, "payload": payload, "jwk": jwk}[where]
    if delete:
        target.pop(name, None)
    else:
        target[name] = value
    signing_input = (
        b64url_encode(_encode_json(header, True)) + "." + b64url_encode(_encode_json(payload, True))
    )
    proof = signing_input + "." + b64url_encode(key.sign(signing_input.encode()))
    result = verify_totally(proof, htm="POST", htu=HTU, nonce_check=NONCE_ISSUER, now=T0)
    if result is not None:
        # Accepted only with the signing key, its algorithm and the request's htm/htu.
        assert (result.jkt, result.alg, result.htm) == (key.jkt, header["alg"], "POST")
        assert result.htu == HTU
