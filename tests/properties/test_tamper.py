"""Tamper: any change to any segment of a valid proof makes it invalid.

Strict, canonical base64url means two different encoded strings never decode to the
same bytes, so a changed proof can never be "the same proof" (attacks on JOSE
parsing; checklist V-2, V-6).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import InvalidProofError, create_proof, verify_proof
from dpopkit.core.jws import b64url_decode, b64url_encode

from .strategies import ALL_ALGS, PROPERTY, key_for

T0 = 1_700_000_000
HTU = "https://resource.example.org/protectedresource"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _proof(alg: str) -> str:
    return create_proof(key_for(alg), htm="GET", htu=HTU, access_token=TOKEN, nonce="n-1", now=T0)


PROOFS = {alg: _proof(alg) for alg in ("ES256", "ES512", "EdDSA", "PS256", "RS256")}


def _verify(proof: str) -> None:
    verify_proof(proof, htm="GET", htu=HTU, access_token=TOKEN, now=T0)


@pytest.mark.parametrize("alg", sorted(PROOFS))
def test_untampered_proofs_verify(alg: str) -> None:
    _verify(PROOFS[alg])


@settings(PROPERTY, max_examples=150)
@given(
    alg=st.sampled_from(sorted(PROOFS)),
    position=st.integers(min_value=0),
    replacement=st.sampled_from(B64URL) | st.characters(),
)
def test_changing_any_character_invalidates(alg: str, position: int, replacement: str) -> None:
    proof = PROOFS[alg]
    index = position % len(proof)
    if proof[index] == replacement:
        replacement = B64URL[(B64URL.index(replacement) + 1) % 64] if replacement in B64URL else "A"
    tampered = proof[:index] + replacement + proof[index + 1 :]
    assert tampered != proof
    with pytest.raises(InvalidProofError):
        _verify(tampered)


@settings(PROPERTY, max_examples=100)
@given(
    alg=st.sampled_from(sorted(PROOFS)),
    segment=st.integers(0, 2),
    position=st.integers(min_value=0),
    bit=st.integers(0, 7),
)
def test_flipping_any_decoded_bit_invalidates(
    alg: str, segment: int, position: int, bit: int
) -> None:
    parts = PROOFS[alg].split(".")
    raw = bytearray(b64url_decode(parts[segment]))
    raw[position % len(raw)] ^= 1 << bit
    parts[segment] = b64url_encode(bytes(raw))
    with pytest.raises(InvalidProofError):
        _verify(".".join(parts))


@settings(PROPERTY, max_examples=60)
@given(alg=st.sampled_from(sorted(PROOFS)), position=st.integers(min_value=0), data=st.data())
def test_deleting_or_inserting_a_character_invalidates(
    alg: str, position: int, data: st.DataObject
) -> None:
    proof = PROOFS[alg]
    index = position % len(proof)
    if data.draw(st.booleans(), label="delete"):
        tampered = proof[:index] + proof[index + 1 :]
    else:
        tampered = proof[:index] + data.draw(st.sampled_from(B64URL + ".=")) + proof[index:]
    with pytest.raises(InvalidProofError):
        _verify(tampered)


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_swapping_signatures_between_proofs_invalidates(alg: str) -> None:
    key = key_for(alg)
    a = create_proof(key, htm="GET", htu=HTU, access_token=TOKEN, now=T0).split(".")
    b = create_proof(key, htm="GET", htu=HTU, access_token=TOKEN, now=T0).split(".")
    with pytest.raises(InvalidProofError):
        _verify(".".join([a[0], a[1], b[2]]))
