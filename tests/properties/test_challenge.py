"""Challenge properties: parsing is total, and build -> parse is the identity (RFC 9110 §11.6.1).

A client parses whatever ``WWW-Authenticate`` a server sends (C-15): only
``ChallengeSyntaxError`` may escape, never an ``IndexError`` or a loop.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import build_challenge, parse_challenges
from dpopkit.core.challenge import ChallengeSyntaxError

from .strategies import PROPERTY, TOKEN_CHARS

VISIBLE = "\t" + "".join(chr(c) for c in range(0x20, 0x7F))
schemes = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=10)
# Names unique case-insensitively; values: any visible text, with quotes and backslashes.
param_lists = st.lists(
    st.tuples(
        st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=10),
        st.text(alphabet=VISIBLE, max_size=20),
    ),
    max_size=5,
    unique_by=lambda item: item[0].lower(),
).filter(
    lambda items: all(n.lower() not in {"error", "error_description", "scope"} for n, _ in items)
)
token68s = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=20),
    st.integers(0, 2),
)


@settings(PROPERTY, max_examples=300)
@given(value=st.text(max_size=80) | st.text(alphabet=' ,="\\\tab=', max_size=40))
def test_parse_is_total(value: str) -> None:
    try:
        challenges = parse_challenges(value)
    except ChallengeSyntaxError:
        return
    for challenge in challenges:
        assert challenge.scheme
        assert all(name == name.lower() for name in challenge.params)


@settings(PROPERTY, max_examples=200)
@given(
    challenges=st.lists(
        st.tuples(schemes, param_lists, st.none() | token68s), min_size=1, max_size=4
    )
)
def test_build_then_parse_round_trips(
    challenges: list[tuple[str, list[tuple[str, str]], str | None]],
) -> None:
    built: list[str] = []
    expected: list[tuple[str, dict[str, str], str | None]] = []
    for scheme, params, token68 in challenges:
        if token68 is not None:
            built.append(build_challenge(scheme, token68=token68))
            expected.append((scheme, {}, token68))
        else:
            built.append(build_challenge(scheme, params))
            expected.append((scheme, {n.lower(): v for n, v in params}, None))
    parsed = parse_challenges(", ".join(built))
    assert [(c.scheme, dict(c.params), c.token68) for c in parsed] == expected
    # Several field lines parse to the same list.
    again = parse_challenges(built)
    assert [(c.scheme, dict(c.params), c.token68) for c in again] == expected
