"""``WWW-Authenticate`` build and parse (RFC 9110 §11.6.1, RFC 6750 §3).

Checklist: RS-17 (several challenges), C-15 / RS-13 (unknown params ignored),
X-9 (RFC 6750 character set, parameters at most once); RFC 9449 Figures 15-19 and 24.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpopkit import Challenge, build_challenge, parse_challenges
from dpopkit.core.challenge import ChallengeSyntaxError

VECTORS = Path(__file__).parent.parent / "vectors"
FIGURES = [
    "rfc9449-fig15-www-authenticate-dpop-no-credentials.json",
    "rfc9449-fig16-www-authenticate-invalid-key-binding.json",
    "rfc9449-fig17-www-authenticate-bearer-and-dpop.json",
    "rfc9449-fig18-www-authenticate-bearer-invalid-token.json",
    "rfc9449-fig19-www-authenticate-ambiguous.json",
    "rfc9449-fig24-rs-use-dpop-nonce.json",
]


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def as_plain(challenges: list[Challenge]) -> list[dict[str, Any]]:
    return [{"scheme": c.scheme, "params": dict(c.params)} for c in challenges]


@pytest.mark.parametrize("name", FIGURES, ids=[n.split("-")[1] for n in FIGURES])
def test_rfc9449_figures_parse_exactly(name: str) -> None:
    vec = vector(name)
    parsed = parse_challenges(vec["field_value"])
    assert as_plain(parsed) == vec["parsed"]
    assert all(c.token68 is None for c in parsed)


@pytest.mark.parametrize("name", FIGURES, ids=[n.split("-")[1] for n in FIGURES])
def test_rfc9449_figures_round_trip_through_build(name: str) -> None:
    vec = vector(name)
    parsed = parse_challenges(vec["field_value"])
    rebuilt = ", ".join(str(c) for c in parsed)
    assert as_plain(parse_challenges(rebuilt)) == vec["parsed"]


def test_rs17_fig17_two_challenges_in_one_field() -> None:
    bearer, dpop = parse_challenges('Bearer, DPoP algs="ES256 PS256"')
    assert bearer.is_scheme("bearer")
    assert dpop.is_scheme("DPOP")
    assert not dpop.is_scheme("Bearer")


def test_rs17_several_header_lines_are_concatenated_in_order() -> None:
    fig17 = vector(FIGURES[2])["field_value"]
    fig24 = vector(FIGURES[5])["field_value"]
    parsed = parse_challenges([fig17, fig24])
    assert [c.scheme for c in parsed] == ["Bearer", "DPoP", "DPoP"]
    assert parsed[2].params["error"] == "use_dpop_nonce"
    assert parse_challenges([]) == []


def test_c15_unknown_parameters_are_kept_and_do_not_fail() -> None:
    (challenge,) = parse_challenges('DPoP algs="ES256", foo="bar", x-y=z')
    assert challenge.params == {"algs": "ES256", "foo": "bar", "x-y": "z"}


def test_parameter_names_are_case_insensitive_and_lower_cased() -> None:
    (challenge,) = parse_challenges('dpop ALGS="ES256", Error=invalid_token')
    assert challenge.scheme == "dpop"
    assert challenge.params == {"algs": "ES256", "error": "invalid_token"}


def test_token_values_bws_and_empty_list_elements() -> None:
    parsed = parse_challenges(' , ,Bearer realm = "api" , ,\tDPoP algs=ES256 ,, ')
    assert as_plain(parsed) == [
        {"scheme": "Bearer", "params": {"realm": "api"}},
        {"scheme": "DPoP", "params": {"algs": "ES256"}},
    ]


def test_quoted_strings_hold_commas_equals_and_escapes() -> None:
    (challenge,) = parse_challenges(r'DPoP error_description="a, b=c \"q\" \\ d", algs="ES256"')
    assert challenge.params == {"error_description": 'a, b=c "q" \\ d', "algs": "ES256"}


def test_token68_challenges() -> None:
    parsed = parse_challenges("Negotiate YIIBhgYGKwYBBQUCoII=, Basic dXNlcg==, DPoP algs=ES256")
    assert [(c.scheme, c.token68, dict(c.params)) for c in parsed] == [
        ("Negotiate", "YIIBhgYGKwYBBQUCoII=", {}),
        ("Basic", "dXNlcg==", {}),
        ("DPoP", None, {"algs": "ES256"}),
    ]
    # ``abc==`` after a scheme is a token68, not an empty parameter.
    (only,) = parse_challenges("Custom abc==")
    assert only.token68 == "abc=="


def test_quoting_round_trip_of_awkward_values() -> None:
    values = {"realm": 'a "quoted" \\ realm, with=commas', "foo": "", "tab": "a\tb", "x": "é"}
    built = build_challenge("DPoP", values)
    (parsed,) = parse_challenges(built)
    assert parsed.params == values


def test_build_challenge_forms() -> None:
    assert build_challenge("Bearer") == "Bearer"
    assert build_challenge("DPoP", {"algs": "ES256 PS256"}) == 'DPoP algs="ES256 PS256"'
    assert (
        build_challenge("DPoP", [("error", "invalid_token"), ("algs", "ES256")])
        == 'DPoP error="invalid_token", algs="ES256"'
    )
    assert build_challenge("Basic", token68="dXNlcg==") == "Basic dXNlcg=="
    assert str(Challenge("Basic", token68="dXNlcg==")) == "Basic dXNlcg=="
    assert str(Challenge("DPoP", {"algs": "ES256"})) == 'DPoP algs="ES256"'


@pytest.mark.parametrize(
    ("scheme", "params", "token68"),
    [
        pytest.param("", (), None, id="empty-scheme"),
        pytest.param("D PoP", (), None, id="space-in-scheme"),
        pytest.param('DPoP"', (), None, id="quote-in-scheme"),
        pytest.param("DPoP", [("al gs", "x")], None, id="bad-param-name"),
        pytest.param("DPoP", [("", "x")], None, id="empty-param-name"),
        # each parameter at most once (names compare case-insensitively).
        pytest.param("DPoP", [("error", "a"), ("error", "b")], None, id="duplicate"),
        pytest.param("DPoP", [("realm", "a"), ("REALM", "b")], None, id="duplicate-case"),
        # error / error_description / scope limited to %x20-21 / %x23-5B / %x5D-7E.
        pytest.param("DPoP", [("error", 'a"b')], None, id="error-quote"),
        pytest.param("DPoP", [("error_description", "a\\b")], None, id="description-backslash"),
        pytest.param("DPoP", [("error_description", "café")], None, id="description-non-ascii"),
        pytest.param("DPoP", [("error_description", "a\tb")], None, id="description-tab"),
        pytest.param("Bearer", [("scope", "a\nb")], None, id="scope-newline"),
        # Any value: no control characters (header injection).
        pytest.param("DPoP", [("realm", "a\r\nSet-Cookie: x=y")], None, id="crlf-injection"),
        pytest.param("DPoP", [("realm", "a\x00")], None, id="nul"),
        pytest.param("DPoP", [("realm", "\u20ac")], None, id="beyond-latin1"),
        # token68
        pytest.param("Basic", [("a", "b")], "abc", id="token68-with-params"),
        pytest.param("Basic", (), "a b", id="token68-space"),
        pytest.param("Basic", (), "abc=def", id="token68-inner-equals"),
        pytest.param("Basic", (), "", id="token68-empty"),
    ],
)
def test_x9_build_challenge_refuses(
    scheme: str, params: list[tuple[str, str]], token68: str | None
) -> None:
    with pytest.raises(ValueError):
        build_challenge(scheme, params, token68=token68)


def test_x9_build_accepts_the_whole_rfc6750_character_set() -> None:
    allowed = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
    built = build_challenge("DPoP", [("error_description", allowed)])
    (parsed,) = parse_challenges(built)
    assert parsed.params["error_description"] == allowed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('DPoP algs="ES256', id="unterminated-quote"),
        pytest.param('DPoP algs="ES256\\', id="trailing-backslash"),
        pytest.param("=x", id="no-scheme"),
        pytest.param('"DPoP"', id="quoted-scheme"),
        pytest.param("DPoP,,=", id="equals-as-scheme"),
        pytest.param('DPoP"algs"', id="junk-after-scheme"),
        pytest.param("DPoP @@@", id="bad-token68"),
        pytest.param("Basic abc def", id="two-token68"),
        pytest.param('DPoP algs="ES256" x', id="junk-after-param"),
        # parameters at most once.
        pytest.param('DPoP error="a", error="b"', id="duplicate-param"),
        pytest.param('DPoP realm="a", REALM="b"', id="duplicate-param-case"),
        pytest.param("DPoP a=b, =c", id="param-without-name"),
    ],
)
def test_parse_refuses_malformed_values(value: str) -> None:
    with pytest.raises(ChallengeSyntaxError):
        parse_challenges(value)


def test_challenge_syntax_error_is_a_value_error() -> None:
    assert issubclass(ChallengeSyntaxError, ValueError)


def test_a_comma_can_end_a_challenge_and_start_the_next() -> None:
    parsed = parse_challenges('DPoP algs="ES256",Bearer realm="x",, Basic')
    assert [c.scheme for c in parsed] == ["DPoP", "Bearer", "Basic"]
    assert parsed[1].params == {"realm": "x"}


ABNF = vector("rfc9449-abnf-cases.json")["cases"]
TOKEN68_CASES = [c for c in ABNF if c["rule"] == "token68"]


@pytest.mark.parametrize("case", TOKEN68_CASES, ids=[c["why"] for c in TOKEN68_CASES])
def test_token68_abnf_vector_cases(case: dict[str, Any]) -> None:
    # RFC 9449 Figure 3 / RFC 9110 §11.2: token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" /
    # "~" / "+" / "/" ) *"="
    if case["valid"]:
        built = build_challenge("DPoP", token68=case["value"])
        (parsed,) = parse_challenges(built)
        assert parsed.token68 == case["value"]
    else:
        with pytest.raises(ValueError):
            build_challenge("DPoP", token68=case["value"])
