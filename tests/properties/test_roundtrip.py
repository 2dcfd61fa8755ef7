"""Round trip: every proof we create verifies and reports what was put in.

Checklist P-1..P-13 from the producer side, V-1..V-12 accepting them.
"""

from __future__ import annotations

from typing import Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import (
    NonceIssuer,
    ProofPolicy,
    access_token_hash,
    create_proof,
    normalize_htu,
    verify_proof,
)

from .strategies import ALL_ALGS, PROPERTY, key_for, methods, nonces, tokens, urls

T0 = 1_700_000_000
RESERVED = {"jti", "htm", "htu", "iat", "ath", "nonce"}
# exp/nbf are checked as time claims when present (HD-14): not arbitrary extra claims here.
TIME_CLAIMS = {"exp", "nbf"}
# JSON a client may put in extra claims (P-13): finite numbers, text without lone surrogates.
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_text = st.text(st.characters(exclude_categories=_SURROGATES), max_size=12)
_claim_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=8,
)
extra_claims = st.dictionaries(
    _text.filter(lambda name: name not in RESERVED | TIME_CLAIMS), _claim_values, max_size=3
)


@settings(PROPERTY, max_examples=60)
@given(
    alg=st.sampled_from(ALL_ALGS),
    htm=methods,
    url=urls,
    access_token=st.none() | tokens,
    nonce=st.none() | nonces,
    delta=st.integers(-5, 60),
    claims=extra_claims,
)
def test_roundtrip_every_algorithm(
    alg: str,
    htm: str,
    url: str,
    access_token: str | None,
    nonce: str | None,
    delta: int,
    claims: dict[str, Any],
) -> None:
    key = key_for(alg)
    proof = create_proof(
        key, htm=htm, htu=url, access_token=access_token, nonce=nonce, claims=claims, now=T0
    )
    # The server sees the same URL (query included) and verifies `delta` seconds later.
    checked = verify_proof(proof, htm=htm, htu=url, access_token=access_token, now=T0 + delta)
    assert checked.jkt == key.jkt
    assert checked.alg == alg
    assert checked.htm == htm
    assert checked.htu == normalize_htu(url)
    assert "?" not in checked.htu
    assert checked.iat == T0
    assert checked.nonce == nonce
    assert checked.ath == (access_token_hash(access_token) if access_token else None)
    assert len(checked.jti) >= 22  # 128 bits, base64url
    for name, value in claims.items():
        assert checked.claims[name] == value
    assert checked.replay_expires_at >= T0 + delta


@settings(PROPERTY, max_examples=25)
@given(alg=st.sampled_from(ALL_ALGS), htm=methods, url=urls, step_offset=st.integers(-1, 2))
def test_roundtrip_with_server_nonce(alg: str, htm: str, url: str, step_offset: int) -> None:
    issuer = NonceIssuer([b"k" * 32], context="rs")
    nonce = issuer.issue(now=T0)
    key = key_for(alg)
    proof = create_proof(key, htm=htm, htu=url, nonce=nonce, now=T0)
    policy = ProofPolicy(require_nonce=True)
    when = T0 + step_offset * issuer.step
    checked = verify_proof(proof, htm=htm, htu=url, policy=policy, nonce_check=issuer, now=when)
    assert checked.nonce == nonce
    assert checked.nonce_info is not None
    assert checked.nonce_info.current is (step_offset <= 0)


@settings(PROPERTY, max_examples=20)
@given(alg=st.sampled_from(ALL_ALGS), url=urls)
def test_two_proofs_never_share_a_jti_or_replay_key(alg: str, url: str) -> None:
    key = key_for(alg)
    first = verify_proof(create_proof(key, htm="GET", htu=url, now=T0), htm="GET", htu=url, now=T0)
    second = verify_proof(create_proof(key, htm="GET", htu=url, now=T0), htm="GET", htu=url, now=T0)
    assert first.jti != second.jti
    assert first.replay_key != second.replay_key
