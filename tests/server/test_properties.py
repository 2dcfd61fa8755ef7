"""Totality of the token service (HD-7): any request gets a well-formed answer, never a 500."""

from __future__ import annotations

import json
import warnings
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpopkit import Headers, RequestView, SecurityWarning
from dpopkit.server.service import ServerSettings

from .conftest import AS, ISSUER, TOKEN_URL, basic

_NAMES = st.sampled_from(
    [
        "grant_type",
        "client_id",
        "client_secret",
        "code",
        "code_verifier",
        "redirect_uri",
        "refresh_token",
        "scope",
        "resource",
        "client_assertion",
        "client_assertion_type",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(["client_credentials", "authorization_code", "refresh_token", "conf", ""]),
    st.text(max_size=40),
)
_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["DPoP", "Authorization", "Content-Type", "dpop", "X-Other"]),
        st.one_of(
            st.sampled_from(
                [
                    "application/x-www-form-urlencoded",
                    basic("conf", "s3cret-s3cret-s3cret"),
                    "Basic !!!",
                    "a.b.c",
                    "DPoP x",
                ]
            ),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        ),
    ),
    max_size=4,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    headers=_HEADERS,
    raw=st.one_of(st.none(), st.binary(max_size=80)),
)
def test_token_endpoint_is_total(
    as_: AS, pairs: list[tuple[str, str]], headers: list[tuple[str, str]], raw: bytes | None
) -> None:
    """HD-7: arbitrary forms and headers → JSON error (400/401/503) or 200, no-store."""
    body = raw if raw is not None else urlencode(pairs).encode()
    view = RequestView(method="POST", url=TOKEN_URL, headers=Headers(headers), body=body)
    resp = as_.service.handle_token(view)
    assert resp.status in (200, 400, 401, 503)
    assert resp.header("Cache-Control") == "no-store"
    data = json.loads(resp.body)
    assert ("access_token" in data) if resp.status == 200 else isinstance(data["error"], str)


def test_as26_long_lived_tokens_without_nonce_warn() -> None:
    """AS-26 / SEC-9: > 1 h access tokens without nonces emit a SecurityWarning."""
    with pytest.warns(SecurityWarning):
        ServerSettings(issuer=ISSUER, access_token_lifetime=7200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServerSettings(issuer=ISSUER, access_token_lifetime=7200, nonce_policy="always")
