"""Optional proof claims: ``exp``/``nbf`` (RFC 7519 §4.1.4, §4.1.5) and an empty ``nonce``.

RFC 9449 §4.2 defines neither ``exp`` nor ``nbf``; when a proof carries them they
are JWT time claims, checked against the same skew as ``iat`` (what the OpenID
FAPI 2 conformance suite expects). An empty ``nonce`` is a wrong nonce, answered
with ``use_dpop_nonce`` and a fresh nonce so that the client recovers (RFC 9449 §8, §9).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import (
    DPoPKey,
    InvalidProofError,
    NonceIssuer,
    ProofPolicy,
    Reason,
    UseNonceError,
    create_proof,
    verify_proof,
)
from dpopkit.core.jws import b64url_encode, json_dumps

HTU = "https://server.example.com/token"
NOW = 1_700_000_000.0
KEY = DPoPKey.generate("ES256")
ISSUER = NonceIssuer([b"n" * 32])


def signed(payload: dict[str, Any], key: DPoPKey = KEY) -> str:
    signing_input = f"{key.proof_header_b64}.{b64url_encode(json_dumps(payload))}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def payload(**extra: Any) -> dict[str, Any]:
    return {"jti": secrets.token_urlsafe(16), "htm": "POST", "htu": HTU, "iat": int(NOW), **extra}


def outcome(proof: str, **kwargs: Any) -> Reason | None:
    kwargs.setdefault("now", NOW)
    try:
        verify_proof(proof, htm="POST", htu=HTU, **kwargs)
    except (InvalidProofError, UseNonceError) as exc:
        return exc.reason
    return None


# --- HD-14: exp and nbf ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "claims", "reason"),
    [
        (ProofPolicy(), {"exp": NOW + 60}, None),
        (ProofPolicy(), {"exp": NOW - 4}, None),
        (ProofPolicy(), {"exp": NOW - 5}, Reason.EXP_IN_PAST),
        (ProofPolicy(), {"exp": NOW - 3600}, Reason.EXP_IN_PAST),
        (ProofPolicy(), {"nbf": NOW + 5}, None),
        (ProofPolicy(), {"nbf": NOW + 6}, Reason.NBF_IN_FUTURE),
        (ProofPolicy(), {"nbf": NOW - 3600}, None),
        (ProofPolicy(), {"nbf": NOW, "exp": NOW + 1}, None),
        (ProofPolicy(future_skew=0), {"exp": NOW}, Reason.EXP_IN_PAST),
        (ProofPolicy(future_skew=0), {"exp": NOW + 0.001}, None),
        (ProofPolicy(future_skew=0), {"nbf": NOW}, None),
        (ProofPolicy(future_skew=0), {"nbf": NOW + 0.001}, Reason.NBF_IN_FUTURE),
        (ProofPolicy(future_skew=30), {"exp": NOW - 29}, None),
        (ProofPolicy(future_skew=30), {"nbf": NOW + 31}, Reason.NBF_IN_FUTURE),
    ],
)
def test_hd14_exp_nbf_window(
    policy: ProofPolicy, claims: dict[str, float], reason: Reason | None
) -> None:
    """HD-14: a proof is accepted only when ``nbf <= now < exp`` with ``future_skew`` of
    leeway, like JWT time claims (RFC 7519 §4.1.4, §4.1.5); boundaries both sides."""
    assert outcome(signed(payload(**claims)), policy=policy) == reason


@pytest.mark.parametrize("name", ["exp", "nbf"])
@pytest.mark.parametrize("value", [None, True, False, "1700000060", [1], {"t": 1}, 10**400])
def test_hd14_exp_nbf_not_a_number_is_bad_claim(name: str, value: object) -> None:
    """HD-14: ``exp``/``nbf`` that are null, booleans (ints in Python), strings, arrays,
    objects or integers too large for a float are no NumericDate (RFC 7519 §2): BAD_CLAIM."""
    with pytest.raises(InvalidProofError) as info:
        verify_proof(signed(payload(**{name: value})), htm="POST", htu=HTU, now=NOW)
    assert info.value.reason == Reason.BAD_CLAIM
    assert info.value.detail == {"claim": name}


def test_hd14_nonce_does_not_excuse_exp() -> None:
    """HD-14: a valid server nonce carries freshness for ``iat`` (SEC-6), never for an
    ``exp`` that has passed or an ``nbf`` still ahead: they are the signer's own limits."""
    nonce = ISSUER.issue(now=NOW)
    policy = ProofPolicy(require_nonce=True)
    stale = payload(iat=int(NOW) - 3600, nonce=nonce)
    assert outcome(signed(stale), policy=policy, nonce_check=ISSUER) is None
    for extra, reason in (
        ({"exp": NOW - 3540}, Reason.EXP_IN_PAST),
        ({"nbf": NOW + 3600}, Reason.NBF_IN_FUTURE),
    ):
        got = outcome(signed({**stale, **extra}), policy=policy, nonce_check=ISSUER)
        assert got == reason


def test_hd14_replay_ttl_unchanged_by_exp() -> None:
    """HD-14: ``exp``/``nbf`` only narrow acceptance; the replay record still lasts the
    whole acceptance window (RFC 9449 §11.1), never less than the proof is accepted."""
    plain = verify_proof(signed(payload()), htm="POST", htu=HTU, now=NOW)
    with_exp = verify_proof(signed(payload(exp=NOW + 1)), htm="POST", htu=HTU, now=NOW)
    with_both = verify_proof(
        signed(payload(nbf=NOW - 1, exp=NOW + 3600)), htm="POST", htu=HTU, now=NOW
    )
    assert with_exp.replay_expires_at == plain.replay_expires_at
    assert with_both.replay_expires_at == plain.replay_expires_at


def test_hd14_create_proof_with_exp_round_trips() -> None:
    """HD-14: ``create_proof(claims={"exp": ...})`` verifies before ``exp`` and fails after."""
    proof = create_proof(KEY, htm="POST", htu=HTU, claims={"exp": int(NOW) + 30}, now=NOW)
    assert verify_proof(proof, htm="POST", htu=HTU, now=NOW + 20).claims["exp"] == NOW + 30
    assert outcome(proof, now=NOW + 35) == Reason.EXP_IN_PAST


@settings(max_examples=200, deadline=None)
@given(
    exp=st.none() | st.integers(-100, 100) | st.floats(-100, 100),
    nbf=st.none() | st.integers(-100, 100) | st.floats(-100, 100),
    skew=st.sampled_from([0, 1, 5, 30]),
)
def test_hd14_accepts_exactly_inside_the_window(
    exp: float | None, nbf: float | None, skew: int
) -> None:
    """HD-14 (property): verify_proof accepts iff ``nbf - skew <= now < exp + skew`` for
    every present claim; otherwise exp_in_past is reported before nbf_in_future."""
    extra: dict[str, float] = {}
    if exp is not None:
        extra["exp"] = NOW + exp
    if nbf is not None:
        extra["nbf"] = NOW + nbf
    policy = ProofPolicy(future_skew=skew)
    expected: Reason | None = None
    if exp is not None and not NOW + exp + skew > NOW:
        expected = Reason.EXP_IN_PAST
    elif nbf is not None and NOW + nbf - skew > NOW:
        expected = Reason.NBF_IN_FUTURE
    assert outcome(signed(payload(**extra)), policy=policy) == expected


# --- HD-15: an empty nonce ------------------------------------------------------------------


@pytest.mark.parametrize("require_nonce", [True, False])
def test_hd15_empty_nonce_is_a_wrong_nonce(require_nonce: bool) -> None:
    """HD-15: ``"nonce": ""`` gets use_dpop_nonce (NONCE_MISMATCH) with a fresh nonce,
    as any wrong nonce does (RFC 9449 §8, §9); a proof with that nonce is then accepted."""
    policy = ProofPolicy(require_nonce=require_nonce)
    with pytest.raises(UseNonceError) as info:
        verify_proof(
            signed(payload(nonce="")),
            htm="POST",
            htu=HTU,
            policy=policy,
            nonce_check=ISSUER,
            now=NOW,
        )
    assert info.value.reason == Reason.NONCE_MISMATCH
    assert info.value.extra_headers() == [("DPoP-Nonce", info.value.nonce)]
    healed = verify_proof(
        signed(payload(nonce=info.value.nonce)),
        htm="POST",
        htu=HTU,
        policy=policy,
        nonce_check=ISSUER,
        now=NOW,
    )
    assert healed.nonce_info is not None
    assert healed.nonce_info.current


def test_hd15_empty_nonce_without_nonce_checks_is_ignored() -> None:
    """HD-15: a server that checks no nonces ignores any nonce value, the empty one too;
    a nonce that is not a string stays a malformed claim (BAD_CLAIM)."""
    assert verify_proof(signed(payload(nonce="")), htm="POST", htu=HTU, now=NOW).nonce == ""
    assert outcome(signed(payload(nonce=0))) == Reason.BAD_CLAIM
    assert outcome(signed(payload(nonce=0)), nonce_check=ISSUER) == Reason.BAD_CLAIM
