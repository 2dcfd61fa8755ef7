"""Properties of ``inspect_proof``: total, and always in agreement with ``verify_proof`` (V-14).

Whatever the input — arbitrary text, or a correctly signed proof whose header
and claims were replaced by arbitrary JSON — the inspector returns (never
raises), and its verdict is the core's: both accept, or both reject and the
core's reason is among the failing checks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import (
    DPoPError,
    DPoPKey,
    NonceIssuer,
    ProofPolicy,
    access_token_hash,
    verify_proof,
)
from dpopkit.cli.inspector import inspect_proof

from .helpers import HTU, NOW, TOKEN, forge

KEY = DPoPKey.generate("ES256")
OTHER = DPoPKey.generate("Ed25519")
ISSUER = NonceIssuer([b"s" * 32])
NONCE = ISSUER.issue(now=NOW)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)

claim_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "GET",
            "POST",
            HTU,
            HTU + "/other",
            "https://API.example:443/items",
            NOW,
            NOW - 120,
            NOW + 30,
            NOW - 5,
            NOW + 6,
            "",
            access_token_hash(TOKEN),
            NONCE,
        ]
    ),
)

header_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "dpop+jwt",
            "application/dpop+jwt",
            "ES256",
            "EdDSA",
            "RS256",
            "none",
            KEY.public_jwk,
            OTHER.public_jwk,
            KEY.private_jwk(),
            ["exp"],
        ]
    ),
)

settings_ = settings(max_examples=150, deadline=None)


def _core_reason(
    proof: str, token: str | None, jkt: str | None, issuer: NonceIssuer | None
) -> str | None:
    # The inspector requires nonces when it is given an issuer: the same policy here.
    policy = ProofPolicy(require_nonce=issuer is not None)
    try:
        verify_proof(
            proof,
            htm="GET",
            htu=HTU,
            now=NOW,
            policy=policy,
            access_token=token,
            expected_jkt=jkt,
            nonce_check=issuer,
        )
    except DPoPError as exc:
        return exc.reason.value
    return None


def _assert_agrees(
    proof: str,
    token: str | None = None,
    jkt: str | None = None,
    issuer: NonceIssuer | None = None,
) -> None:
    result = inspect_proof(
        proof,
        htm="GET",
        htu=HTU,
        now=NOW,
        access_token=token,
        expected_jkt=jkt,
        nonce_issuer=issuer,
    )
    reason = _core_reason(proof, token, jkt, issuer)
    assert result.core_reason == reason
    if reason is None:
        assert result.valid
        assert not result.failed
    else:
        assert not result.valid
        assert reason in {c.reason for c in result.failed}
    assert result.agrees


@settings_
@given(st.text(max_size=400))
def test_v14_totality_on_arbitrary_text(text: str) -> None:
    _assert_agrees(text)


@settings_
@given(st.lists(st.text(alphabet="ABCabc012-_=+/.", max_size=60), min_size=1, max_size=5))
def test_v14_totality_on_segment_shapes(segments: list[str]) -> None:
    _assert_agrees(".".join(segments))


@settings_
@given(
    header=st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), header_values),
    payload=st.dictionaries(
        st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce", "exp", "nbf", "extra"]),
        claim_values,
    ),
    drop=st.lists(st.sampled_from(["typ", "jwk", "jti", "htm", "htu", "iat"]), max_size=2),
    other_signer=st.booleans(),
    token=st.sampled_from([None, TOKEN]),
    jkt=st.sampled_from([None, KEY.jkt, OTHER.jkt]),
    nonce_issuer=st.sampled_from([None, ISSUER]),
)
def test_v14_signed_mutations_agree_with_verify_proof(
    header: dict[str, Any],
    payload: dict[str, Any],
    drop: list[str],
    other_signer: bool,
    token: str | None,
    jkt: str | None,
    nonce_issuer: NonceIssuer | None,
) -> None:
    proof = forge(
        KEY,
        header=header,
        payload=payload,
        drop=tuple(drop),
        signer=OTHER if other_signer else None,
    )
    _assert_agrees(proof, token, jkt, nonce_issuer)
