"""Nonce properties: accepted inside the window, refused outside or when tampered (AS-16, RS-23)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import NonceIssuer, Reason, UseNonceError

from .strategies import PROPERTY

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

issuers = st.builds(
    lambda secret, step, past, context: NonceIssuer(
        [secret], step=step, accept_past_steps=past, context=context
    ),
    st.binary(min_size=32, max_size=64),
    st.integers(1, 600),
    st.integers(0, 5),
    st.text(max_size=10),
)
# Realistic clocks: after 1970-01-12 and before 2033 (the 32-bit step never wraps here).
times = st.floats(min_value=1e6, max_value=2e9, allow_nan=False)


@settings(PROPERTY, max_examples=150)
@given(issuer=issuers, issued=times, data=st.data())
def test_accepted_inside_the_window(
    issuer: NonceIssuer, issued: float, data: st.DataObject
) -> None:
    nonce = issuer.issue(now=issued)
    step_start = (issued // issuer.step) * issuer.step
    steps = data.draw(st.integers(-1, issuer.accept_past_steps), label="steps later")
    within = data.draw(st.floats(0, 0.999), label="fraction of the step")
    now = step_start + (steps + within) * issuer.step
    info = issuer.verify(nonce, now=now)
    assert info.issued_at == step_start
    assert info.current is (steps <= 0)
    assert info.issued_at <= now + issuer.step
    assert now < info.expires_at


@settings(PROPERTY, max_examples=150)
@given(issuer=issuers, issued=times, data=st.data())
def test_refused_outside_the_window(
    issuer: NonceIssuer, issued: float, data: st.DataObject
) -> None:
    nonce = issuer.issue(now=issued)
    step_start = (issued // issuer.step) * issuer.step
    steps = data.draw(
        st.integers(issuer.accept_past_steps + 1, 10_000) | st.integers(-10_000, -2),
        label="steps later",
    )
    now = step_start + steps * issuer.step
    with pytest.raises(UseNonceError) as info:
        issuer.verify(nonce, now=now)
    assert info.value.reason is Reason.NONCE_MISMATCH
    assert issuer.verify(info.value.nonce, now=now).current


@settings(PROPERTY, max_examples=150)
@given(issuer=issuers, issued=times, position=st.integers(0, 31), data=st.data())
def test_refused_when_tampered(
    issuer: NonceIssuer, issued: float, position: int, data: st.DataObject
) -> None:
    nonce = issuer.issue(now=issued)
    replacement = data.draw(st.sampled_from(B64URL).filter(lambda c: c != nonce[position]))
    tampered = nonce[:position] + replacement + nonce[position + 1 :]
    with pytest.raises(UseNonceError):
        issuer.verify(tampered, now=issued)


@settings(PROPERTY, max_examples=100)
@given(
    secret=st.binary(min_size=32, max_size=40),
    first=st.text(max_size=10),
    second=st.text(max_size=10),
    issued=times,
)
def test_rs23_other_context_refuses(secret: bytes, first: str, second: str, issued: float) -> None:
    nonce = NonceIssuer([secret], context=first).issue(now=issued)
    other = NonceIssuer([secret], context=second)
    if first == second:
        assert other.verify(nonce, now=issued).current
    else:
        with pytest.raises(UseNonceError):
            other.verify(nonce, now=issued)
