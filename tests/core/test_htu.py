"""``htu`` normalisation (V-9, V-13; RFC 3986 §6.2.2-6.2.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpopkit import htu_matches, normalize_htu
from dpopkit.core.htu import MAX_HTU_LENGTH, remove_dot_segments

VECTORS = Path(__file__).parent.parent / "vectors"
CASES: dict[str, Any] = json.loads(
    (VECTORS / "rfc3986-sec6-htu-normalization-cases.json").read_text(encoding="utf-8")
)


def _ids(groups: list[dict[str, Any]]) -> list[str]:
    return [" | ".join(g["uris"]) for g in groups]


@pytest.mark.parametrize("group", CASES["equivalent_groups"], ids=_ids(CASES["equivalent_groups"]))
def test_v9_vector_equivalent_groups_normalise_alike(group: dict[str, Any]) -> None:
    normal = {normalize_htu(uri) for uri in group["uris"]}
    assert len(normal) == 1
    first = group["uris"][0]
    for uri in group["uris"]:
        assert htu_matches(uri, first)


@pytest.mark.parametrize("pair", CASES["different_pairs"], ids=_ids(CASES["different_pairs"]))
def test_v9_vector_different_pairs_do_not_match(pair: dict[str, Any]) -> None:
    left, right = pair["uris"]
    assert normalize_htu(left) != normalize_htu(right)
    assert not htu_matches(left, right)


@pytest.mark.parametrize(
    "case", CASES["remove_dot_segments"], ids=[c["input"] for c in CASES["remove_dot_segments"]]
)
def test_vector_remove_dot_segments(case: dict[str, str]) -> None:
    assert remove_dot_segments(case["input"]) == case["output"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b/c/./../../g", "/a/g"),
        ("mid/content=5/../6", "mid/6"),
        ("/no/dots", "/no/dots"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/../a", "/a"),
        ("/..", "/"),
        ("/.", "/"),
        ("../a", "a"),
        ("./a", "a"),
        (".", ""),
        ("..", ""),
        ("/a/b/../../../c", "/c"),
        ("/a/.b/..c/", "/a/.b/..c/"),
        ("/a/b/..", "/a/"),
        ("", ""),
    ],
)
def test_remove_dot_segments_rfc3986_5_2_4(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # §6.2.2.1 case: scheme and host lower-case, path case kept.
        ("HTTPS://API.Example.COM/Items", "https://api.example.com/Items"),
        # §6.2.3: default port dropped, empty port dropped, empty path is '/'.
        ("https://a.example:443", "https://a.example/"),
        ("https://a.example:", "https://a.example/"),
        ("http://a.example:80/x", "http://a.example/x"),
        ("https://a.example:80/x", "https://a.example:80/x"),
        ("http://a.example:443/x", "http://a.example:443/x"),
        ("https://a.example:0443/x", "https://a.example/x"),
        ("https://a.example:08443/x", "https://a.example:8443/x"),
        ("https://a.example:65535/x", "https://a.example:65535/x"),
        # P-8, RFC 9449 §4.3 (9): query and fragment dropped.
        ("https://a.example/x?y=1#f", "https://a.example/x"),
        ("https://a.example/x#f?y", "https://a.example/x"),
        ("https://a.example?q", "https://a.example/"),
        ("https://a.example#f", "https://a.example/"),
        # §6.2.2.1/§6.2.2.2 percent-encoding: upper-case hex, unreserved decoded only.
        ("https://a.example/%7euser", "https://a.example/~user"),
        ("https://a.example/%41%62%2D%2e%5F%7E", "https://a.example/Ab-._~"),
        ("https://a.example/a%2fb", "https://a.example/a%2Fb"),
        ("https://a.example/%3f%23%25", "https://a.example/%3F%23%25"),
        ("https://a.example/%e2%82%ac", "https://a.example/%E2%82%AC"),
        # §6.2.2.3: dot segments removed, after decoding (§6.2.2 order: %2E is a dot).
        ("https://a.example/a/./b/../c", "https://a.example/a/c"),
        ("https://a.example/../../x", "https://a.example/x"),
        ("https://a.example/a/%2E%2E/b", "https://a.example/b"),
        # Trailing slash significant.
        ("https://a.example/token/", "https://a.example/token/"),
        # Percent-encoded unreserved characters in the host are decoded.
        ("https://%61.Example/", "https://a.example/"),
        # RFC 3987 §3.1: a non-ASCII path is encoded as UTF-8 octets.
        ("https://a.example/€", "https://a.example/%E2%82%AC"),
        # Sub-delims and ':' '@' are path characters.
        ("https://a.example/a:b@c!$&'()*+,;=", "https://a.example/a:b@c!$&'()*+,;="),
        # IPv6 and IPv4 literals.
        ("https://[::1]/x", "https://[::1]/x"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[2001:DB8::A]:8443/x", "https://[2001:db8::a]:8443/x"),
        ("https://[::ffff:192.0.2.1]/", "https://[::ffff:192.0.2.1]/"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
    ],
)
def test_v9_normalisation(uri: str, expected: str) -> None:
    assert normalize_htu(uri) == expected
    # Idempotence: a normal form is its own normal form.
    assert normalize_htu(expected) == expected
    assert htu_matches(uri, expected)


@pytest.mark.parametrize(
    "uri",
    [
        # userinfo is refused (it could smuggle a second host).
        pytest.param("https://user@a.example/", id="userinfo"),
        pytest.param("https://user:pw@a.example/", id="userinfo-password"),
        pytest.param("https://a.example@b.example/", id="userinfo-host-confusion"),
        # schemes and shapes
        pytest.param("ftp://a.example/", id="ftp"),
        pytest.param("wss://a.example/", id="wss"),
        pytest.param("//a.example/", id="scheme-relative"),
        pytest.param("/token", id="relative"),
        pytest.param("https:/a.example/", id="one-slash"),
        pytest.param("https:a.example", id="no-slashes"),
        pytest.param("", id="empty"),
        pytest.param("https://", id="no-host"),
        pytest.param("https:///x", id="empty-host"),
        pytest.param("https://:443/x", id="port-only"),
        # hosts
        pytest.param("https://bücher.example/", id="non-ascii-host"),
        pytest.param("https://a_b|c.example/", id="bad-host-char"),
        pytest.param("https://a%2.example/", id="broken-host-pct"),
        pytest.param("https://a%zz.example/", id="bad-host-pct"),
        pytest.param("https://[::1/x", id="unterminated-ipv6"),
        pytest.param("https://[::g]/x", id="bad-ipv6"),
        pytest.param("https://[]/x", id="empty-ipv6"),
        pytest.param("https://[::1]junk/x", id="junk-after-ipv6"),
        pytest.param("https://[::1]:abc/x", id="ipv6-bad-port"),
        # ports
        pytest.param("https://a.example:0/x", id="port-zero"),
        pytest.param("https://a.example:000/x", id="port-zeros"),
        pytest.param("https://a.example:65536/x", id="port-too-big"),
        pytest.param("https://a.example:123456/x", id="port-six-digits"),
        pytest.param("https://a.example:-1/x", id="port-negative"),
        pytest.param("https://a.example:44a/x", id="port-letters"),
        pytest.param("https://a.example:443:443/x", id="two-ports"),
        # paths
        pytest.param("https://a.example/a b", id="space"),
        pytest.param("https://a.example/a\tb", id="tab"),
        pytest.param("https://a.example/a\x00", id="nul"),
        pytest.param("https://a.example/a\x7f", id="del"),
        pytest.param("https://a.example/<x>", id="angle-brackets"),
        pytest.param('https://a.example/"x"', id="quote"),
        pytest.param("https://a.example/{x}", id="braces"),
        pytest.param("https://a.example/a\\b", id="backslash"),
        pytest.param("https://a.example/a%", id="pct-at-end"),
        pytest.param("https://a.example/a%2", id="pct-truncated"),
        pytest.param("https://a.example/a%zz", id="pct-not-hex"),
        pytest.param("https://a.example/" + "a" * MAX_HTU_LENGTH, id="too-long"),
    ],
)
def test_v9_unusable_htu_values_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(uri)
    assert not htu_matches(uri, uri)
    assert not htu_matches("https://a.example/", uri)


@pytest.mark.parametrize("value", [None, 1, b"https://a.example/"])
def test_non_string_htu_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        normalize_htu(value)


def test_htu_at_the_length_limit_is_accepted() -> None:
    prefix = "https://a.example/"
    uri = prefix + "a" * (MAX_HTU_LENGTH - len(prefix))
    assert normalize_htu(uri) == uri


def test_v9_path_case_trailing_slash_and_encoded_slash_are_significant() -> None:
    assert not htu_matches("https://a.example/token", "https://a.example/Token")
    assert not htu_matches("https://a.example/token", "https://a.example/token/")
    assert not htu_matches("https://a.example/a%2Fb", "https://a.example/a/b")
    assert not htu_matches("https://a.example/x", "https://b.example/x")
    assert not htu_matches("https://a.example:8443/x", "https://a.example/x")
    assert htu_matches("https://a.example/%7Ex", "https://A.EXAMPLE:443/~x?q#f")
