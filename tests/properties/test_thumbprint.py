"""Thumbprint properties: member order and extra members never matter (checklist X-1, X-2, P-15)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import jwk_thumbprint

from .strategies import PROPERTY, json_values, key_for

KEY_ALGS = ["ES256", "ES384", "ES512", "EdDSA", "PS256"]
REQUIRED = {"crv", "kty", "x", "y", "e", "n"}

extra_members = st.dictionaries(
    st.text(max_size=10).filter(lambda name: name not in REQUIRED), json_values, max_size=5
)


@settings(PROPERTY, max_examples=150)
@given(alg=st.sampled_from(KEY_ALGS), extra=extra_members, data=st.data())
def test_thumbprint_ignores_order_and_extra_members(
    alg: str, extra: dict[str, Any], data: st.DataObject
) -> None:
    key = key_for(alg)
    members = list({**extra, **key.public_jwk}.items())
    shuffled = dict(data.draw(st.permutations(members), label="order"))
    assert jwk_thumbprint(shuffled) == key.jkt


@settings(PROPERTY, max_examples=50)
@given(first=st.sampled_from(KEY_ALGS), second=st.sampled_from(KEY_ALGS))
def test_different_keys_have_different_thumbprints(first: str, second: str) -> None:
    same = key_for(first) == key_for(second)
    assert (key_for(first).jkt == key_for(second).jkt) is same
    assert same is (first == second)


@settings(PROPERTY, max_examples=100)
@given(alg=st.sampled_from(KEY_ALGS), data=st.data())
def test_changing_a_required_member_changes_the_thumbprint(alg: str, data: st.DataObject) -> None:
    jwk = key_for(alg).public_jwk
    name = data.draw(st.sampled_from(sorted(set(jwk) - {"kty"})), label="member")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=60), label="value")
    changed = {**jwk, name: value}
    assert (jwk_thumbprint(changed) == key_for(alg).jkt) is (value == jwk[name])
