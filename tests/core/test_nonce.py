"""Stateless rotating server nonces (RFC 9449 §8, §9).

Checklist: AS-13 (unpredictable), AS-16 (window), AS-17 / X-13 (NQCHAR syntax),
RS-23 (an AS nonce is not an RS nonce).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from pathlib import Path

import pytest

from dpopkit import (
    DPoPKey,
    NonceInfo,
    NonceIssuer,
    Reason,
    UseNonceError,
    create_proof,
    verify_proof,
)
from dpopkit.core.jws import b64url_decode, b64url_encode

VECTORS = Path(__file__).parent.parent / "vectors"
HTU = "https://server.example.com/token"
STEP = 60
NOW = 1_700_000_040.0  # inside a step, not at its start
STEP_START = (NOW // STEP) * STEP
SECRET_A = b"a" * 32
SECRET_B = bytes(range(32, 96))
# AS-17, X-13: nonce = 1*NQCHAR; NQCHAR = %x21 / %x23-5B / %x5D-7E.
NQCHAR_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def issuer(*secret_list: bytes, context: str = "", past: int = 2) -> NonceIssuer:
    return NonceIssuer(list(secret_list) or [SECRET_A], context=context, accept_past_steps=past)


def assert_refused(nonce_issuer: NonceIssuer, nonce: object, *, now: float = NOW) -> None:
    with pytest.raises(UseNonceError) as info:
        nonce_issuer.verify(nonce, now=now)  # type: ignore[arg-type]
    assert info.value.reason is Reason.NONCE_MISMATCH
    assert info.value.error == "use_dpop_nonce"
    # The error carries a fresh nonce that this issuer accepts (RFC 9449 §8).
    fresh = info.value.nonce
    assert nonce_issuer.verify(fresh, now=now).current


def test_as16_issue_verify_round_trip() -> None:
    nonces = issuer()
    nonce = nonces.issue(now=NOW)
    info = nonces.verify(nonce, now=NOW)
    assert info == NonceInfo(issued_at=STEP_START, expires_at=STEP_START + 3 * STEP, current=True)


def test_as17_nonce_syntax_is_nqchar() -> None:
    nonces = issuer()
    for t in range(0, 200 * STEP, STEP):
        nonce = nonces.issue(now=NOW + t)
        assert NQCHAR_RE.fullmatch(nonce)
        assert len(nonce) == 32


def test_same_step_gives_the_same_value_everywhere() -> None:
    # Stateless: two instances sharing the secret issue the same nonce within one step.
    assert issuer().issue(now=STEP_START) == issuer().issue(now=STEP_START + STEP - 0.001)
    assert issuer().issue(now=STEP_START) != issuer().issue(now=STEP_START + STEP)


@pytest.mark.parametrize(
    ("offset_steps", "current"),
    [(-1, True), (0, True), (1, False), (2, False)],
)
def test_as16_accepted_inside_the_window(offset_steps: int, current: bool) -> None:
    nonces = issuer(past=2)
    nonce = nonces.issue(now=NOW)
    # Both edges of every accepted step: its first and its last instant.
    for now in (
        STEP_START + offset_steps * STEP,
        STEP_START + (offset_steps + 1) * STEP - 0.001,
    ):
        assert nonces.verify(nonce, now=now).current is current


@pytest.mark.parametrize("offset_steps", [-3, -2, 3, 4, 1000])
def test_as16_refused_outside_the_window(offset_steps: int) -> None:
    nonces = issuer(past=2)
    nonce = nonces.issue(now=NOW)
    assert_refused(nonces, nonce, now=STEP_START + offset_steps * STEP)
    assert_refused(nonces, nonce, now=STEP_START + (offset_steps + 1) * STEP - 0.001)


def test_window_edges_follow_accept_past_steps() -> None:
    nonces = issuer(past=0)
    nonce = nonces.issue(now=NOW)
    assert nonces.verify(nonce, now=STEP_START + STEP - 0.001).current
    assert_refused(nonces, nonce, now=STEP_START + STEP)
    info = nonces.verify(nonce, now=NOW)
    assert info.expires_at == STEP_START + STEP


def test_expires_at_is_the_first_instant_the_nonce_is_refused() -> None:
    nonces = issuer(past=2)
    nonce = nonces.issue(now=NOW)
    expires = nonces.verify(nonce, now=NOW).expires_at
    nonces.verify(nonce, now=expires - 0.001)
    assert_refused(nonces, nonce, now=expires)


def test_as16_rotation_new_secret_signs_old_still_verifies() -> None:
    old_only = issuer(SECRET_A)
    old_nonce = old_only.issue(now=NOW)
    rotated = issuer(SECRET_B, SECRET_A)
    # The old secret still verifies, but its nonce is no longer current: send a fresh one.
    info = rotated.verify(old_nonce, now=NOW)
    assert not info.current
    new_nonce = rotated.issue(now=NOW)
    assert new_nonce != old_nonce
    assert rotated.verify(new_nonce, now=NOW).current
    # An instance that has not rotated yet, but knows the new secret, accepts it too.
    assert issuer(SECRET_A, SECRET_B).verify(new_nonce, now=NOW).current is False
    # Any instance holding only the new secret accepts the new nonce.
    assert issuer(SECRET_B).verify(new_nonce, now=NOW).current


def test_as16_removed_secret_no_longer_verifies() -> None:
    old_nonce = issuer(SECRET_A).issue(now=NOW)
    assert_refused(issuer(SECRET_B), old_nonce)


def test_rs23_context_separates_as_and_rs_nonces() -> None:
    as_nonces = issuer(context="as")
    rs_nonces = issuer(context="rs:https://api.example")
    as_nonce = as_nonces.issue(now=NOW)
    rs_nonce = rs_nonces.issue(now=NOW)
    assert as_nonce != rs_nonce
    assert_refused(rs_nonces, as_nonce)
    assert_refused(as_nonces, rs_nonce)
    assert_refused(issuer(context="rs:https://other.example"), rs_nonce)


def test_tampering_any_character_is_refused() -> None:
    nonces = issuer()
    nonce = nonces.issue(now=NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(nonce):
        replacement = alphabet[(alphabet.index(char) + 1) % 64]
        assert_refused(nonces, nonce[:i] + replacement + nonce[i + 1 :])


def test_tampered_step_with_old_mac_is_refused() -> None:
    # Moving the embedded time step forward without the secret fails the MAC.
    nonces = issuer()
    raw = bytearray(b64url_decode(nonces.issue(now=NOW - 10 * STEP)))
    step = int.from_bytes(raw[4:8], "big") + 10
    raw[4:8] = step.to_bytes(4, "big")
    assert_refused(nonces, b64url_encode(bytes(raw)))


@pytest.mark.parametrize(
    "nonce",
    [
        pytest.param("", id="empty"),
        pytest.param("short", id="short"),
        pytest.param("A" * 31, id="31"),
        pytest.param("A" * 33, id="33"),
        pytest.param("A" * 32, id="unknown-kid"),
        pytest.param("+" * 32, id="not-base64url"),
        pytest.param("é" * 32, id="non-ascii"),
        pytest.param("eyJ7S_zG.eyJH0-Z.HX4w-7v", id="rfc-figure-20-value"),
        pytest.param(None, id="none"),
        pytest.param(b"A" * 32, id="bytes"),
        pytest.param(123, id="number"),
    ],
)
def test_malformed_nonces_are_refused(nonce: object) -> None:
    assert_refused(issuer(), nonce)


def test_as13_nonces_are_distinct_and_not_sequential() -> None:
    nonces = issuer(secrets.token_bytes(32))
    values = [nonces.issue(now=t * STEP) for t in range(10_000)]
    assert len(set(values)) == len(values)
    macs = [int.from_bytes(b64url_decode(v)[8:], "big") for v in values]
    # The MAC part of consecutive steps differs in about half of its 128 bits.
    distances = [bin(a ^ b).count("1") for a, b in itertools.pairwise(macs)]
    mean = sum(distances) / len(distances)
    assert 60 < mean < 68
    assert min(distances) > 20


def test_as13_different_secrets_give_unrelated_nonces() -> None:
    a = issuer(secrets.token_bytes(32)).issue(now=NOW)
    b = issuer(secrets.token_bytes(32)).issue(now=NOW)
    assert a != b
    assert b64url_decode(a)[8:] != b64url_decode(b)[8:]


def test_challenge_returns_a_use_nonce_error_with_a_current_nonce() -> None:
    nonces = issuer()
    err = nonces.challenge(now=NOW)
    assert isinstance(err, UseNonceError)
    assert err.reason is Reason.NONCE_REQUIRED
    assert err.nonce == nonces.issue(now=NOW)
    assert nonces.challenge(Reason.IAT_TOO_OLD, now=NOW).reason is Reason.IAT_TOO_OLD


@pytest.mark.parametrize(
    "secret_list",
    [
        pytest.param(b"a" * 32, id="bytes-not-a-list"),
        pytest.param(bytearray(b"a" * 32), id="bytearray-not-a-list"),
        pytest.param([], id="empty"),
        pytest.param([b"short"], id="short-secret"),
        pytest.param([b"a" * 31], id="31-bytes"),
        pytest.param(["a" * 32], id="str-secret"),
        pytest.param([SECRET_A, b"b" * 10], id="one-short"),
    ],
)
def test_bad_secrets_are_refused_at_construction(secret_list: object) -> None:
    with pytest.raises(ValueError):
        NonceIssuer(secret_list)  # type: ignore[arg-type]


@pytest.mark.parametrize(("step", "past"), [(0, 2), (-60, 2), (60, -1)])
def test_bad_window_is_refused_at_construction(step: int, past: int) -> None:
    with pytest.raises(ValueError):
        NonceIssuer([SECRET_A], step=step, accept_past_steps=past)


def test_duplicate_secrets_count_once_and_repr_hides_them() -> None:
    nonces = NonceIssuer([SECRET_A, SECRET_A, SECRET_B])
    text = repr(nonces)
    assert "keys=2" in text
    assert SECRET_A.decode() not in text
    nonce = nonces.issue(now=NOW)
    assert issuer(SECRET_A).verify(nonce, now=NOW).current


ABNF_NONCE_CASES = [
    c
    for c in json.loads((VECTORS / "rfc9449-abnf-cases.json").read_text(encoding="utf-8"))["cases"]
    if c["rule"] == "nonce"
]


@pytest.mark.parametrize("case", ABNF_NONCE_CASES, ids=[c["why"] for c in ABNF_NONCE_CASES])
def test_as17_x13_nonce_abnf_vector_cases(case: dict[str, object]) -> None:
    # RFC 9449 Figure 22: nonce = 1*NQCHAR. The producer accepts exactly these values.
    value = case["value"]
    assert isinstance(value, str)
    assert bool(NQCHAR_RE.fullmatch(value)) is case["valid"]
    key = DPoPKey.generate("ES256")
    if case["valid"]:
        proof = create_proof(key, htm="POST", htu=HTU, nonce=value, now=NOW)
        assert verify_proof(proof, htm="POST", htu=HTU, now=NOW).nonce == value
    else:
        with pytest.raises(ValueError):
            create_proof(key, htm="POST", htu=HTU, nonce=value, now=NOW)
