"""Framework-free HTTP views: headers, requests, responses."""

from __future__ import annotations

import dataclasses

import pytest

from dpopkit import Headers, InvalidProofError, Reason, RequestView, ResponseView, extract_proof
from dpopkit.core.http import AUTH_SCHEME, DPOP_HEADER, DPOP_NONCE_HEADER


def test_header_constants() -> None:
    assert (DPOP_HEADER, DPOP_NONCE_HEADER, AUTH_SCHEME) == ("DPoP", "DPoP-Nonce", "DPoP")


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([("DPoP", "a"), ("Authorization", "DPoP t"), ("dpop", "b")])
    assert headers["dpop"] == headers["DPOP"] == "a"
    assert headers.get_all("Dpop") == ["a", "b"]
    assert headers.get_all("missing") == []
    assert "AUTHORIZATION" in headers
    assert "x" not in headers
    assert 1 not in headers  # type: ignore[comparison-overlap]
    assert len(headers) == 2
    assert sorted(headers) == ["authorization", "dpop"]
    assert headers.items_all() == (("DPoP", "a"), ("Authorization", "DPoP t"), ("dpop", "b"))
    with pytest.raises(KeyError):
        headers["missing"]


def test_get_all_returns_a_copy() -> None:
    headers = Headers([("a", "1")])
    headers.get_all("a").append("2")
    assert headers.get_all("a") == ["1"]


def test_headers_from_mapping_headers_and_none() -> None:
    from_dict = Headers({"Content-Type": "application/json", "X-N": 5})  # type: ignore[arg-type]
    assert from_dict["content-type"] == "application/json"
    assert from_dict["x-n"] == "5"
    copied = Headers(from_dict)
    assert copied.items_all() == from_dict.items_all()
    assert len(Headers()) == 0
    assert len(Headers(None)) == 0
    assert Headers([("a", 1)])["A"] == "1"  # type: ignore[list-item]


def test_with_items_appends_without_mutating() -> None:
    base = Headers([("DPoP", "a")])
    more = base.with_items(("DPoP", "b"), ("X", "y"))
    assert base.get_all("dpop") == ["a"]
    assert more.get_all("dpop") == ["a", "b"]
    assert more["x"] == "y"


def test_headers_repr_never_shows_values() -> None:
    headers = Headers([("Authorization", "DPoP secret-token"), ("DPoP", "eyJproof")])
    text = repr(headers)
    assert "secret-token" not in text
    assert "eyJproof" not in text
    assert "authorization" in text


def test_request_view_is_frozen_and_keyword_only() -> None:
    view = RequestView(method="GET", url="https://a.example/")
    assert view.headers == Headers()
    assert view.body is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.method = "POST"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RequestView("GET", "https://a.example/")  # type: ignore[call-arg]


def test_response_view_header_lookup() -> None:
    response = ResponseView(status=401, headers=(("WWW-Authenticate", "DPoP"), ("x", "1")))
    assert response.header("www-authenticate") == "DPoP"
    assert response.header("missing") is None
    assert ResponseView(status=204).body == b""
    with pytest.raises(dataclasses.FrozenInstanceError):
        response.status = 200  # type: ignore[misc]


def test_v1_duplicate_dpop_fields_stay_visible_to_extract_proof() -> None:
    # RFC 9449 §4.3 (1): the Headers view keeps both occurrences so the check can see them.
    headers = Headers([("DPoP", "a.b.c"), ("dpop", "d.e.f")])
    with pytest.raises(InvalidProofError) as info:
        extract_proof(headers)
    assert info.value.reason is Reason.MULTIPLE_PROOFS
