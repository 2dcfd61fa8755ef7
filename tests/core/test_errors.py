"""The error tree and its HTTP rendering.

RFC 9449 §5, §7.1 (AS 400 JSON, RS 401 challenge), RS-12 (``algs``), RS-17..RS-20
(Bearer + DPoP challenges), AS-14 / RS nonce challenges (``DPoP-Nonce``), and
"the description never echoes an expected value".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import dpopkit.errors as errors_module
from dpopkit import (
    DPoPKey,
    InsufficientScopeError,
    InvalidClientError,
    InvalidProofError,
    InvalidRequestError,
    InvalidTokenError,
    NonceIssuer,
    ProofPolicy,
    Reason,
    ReplayStoreError,
    ResponseView,
    ServerConfigurationError,
    TemporarilyUnavailableError,
    UseNonceError,
    access_token_hash,
    build_challenge,
    create_proof,
    parse_challenges,
    verify_proof,
)
from dpopkit.errors import DPoPError

VECTORS = Path(__file__).parent.parent / "vectors"
NOW = 1_700_000_000.0
HTU = "https://api.example/resource"
NONCE = "eyJ7S_zG.eyJH0-Z.HX4w-7v"
RFC6750_CHARS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def all_error_classes() -> list[type[DPoPError]]:
    found: list[type[DPoPError]] = []
    pending: list[type[DPoPError]] = [DPoPError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == "dpopkit.errors"]


def make(cls: type[DPoPError], reason: Reason | None = None) -> DPoPError:
    if cls is UseNonceError:
        return UseNonceError(reason, nonce=NONCE)
    return cls(reason)


# error code, AS status, RS status for every class (one row per class).
EXPECTED = {
    "DPoPError": ("invalid_request", 400, 401),
    "InvalidProofError": ("invalid_dpop_proof", 400, 401),
    "UseNonceError": ("use_dpop_nonce", 400, 401),
    "InvalidTokenError": ("invalid_token", 400, 401),
    "InsufficientScopeError": ("insufficient_scope", 400, 403),
    "InvalidRequestError": ("invalid_request", 400, 400),
    "OAuthError": ("invalid_request", 400, 400),
    "InvalidGrantError": ("invalid_grant", 400, 400),
    "InvalidClientError": ("invalid_client", 401, 401),
    "UnauthorizedClientError": ("unauthorized_client", 400, 400),
    "UnsupportedGrantTypeError": ("unsupported_grant_type", 400, 400),
    "InvalidScopeError": ("invalid_scope", 400, 400),
    "TemporarilyUnavailableError": ("temporarily_unavailable", 503, 503),
    "ReplayStoreError": ("temporarily_unavailable", 503, 503),
    "ClientError": ("invalid_request", 400, 401),
    "NonceRetryExhaustedError": ("use_dpop_nonce", 400, 401),
    "MissingNonceError": ("use_dpop_nonce", 400, 401),
    "ChallengeError": ("invalid_request", 400, 401),
    "TokenResponseError": ("invalid_request", 400, 401),
    "AuthorizationServerError": ("server_error", 400, 401),
    "ServerConfigurationError": ("server_error", 500, 500),
}


def test_the_expected_table_covers_every_error_class() -> None:
    assert {c.__name__ for c in all_error_classes()} == set(EXPECTED)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_class_error_code_and_statuses(cls: type[DPoPError]) -> None:
    code, as_status, rs_status = EXPECTED[cls.__name__]
    err = make(cls)
    assert err.error == cls.error == code
    assert err.reason is cls.default_reason
    assert err.status_code == rs_status
    assert err.as_response(role="as").status == as_status
    assert err.as_response(role="rs").status == rs_status


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_class_renders_a_json_body_with_no_store(cls: type[DPoPError]) -> None:
    err = make(cls)
    for role in ("as", "rs"):
        response = err.as_response(role=role)
        assert isinstance(response, ResponseView)
        assert json.loads(response.body) == {
            "error": err.error,
            "error_description": err.description,
        }
        assert response.header("content-type") == "application/json"
        assert response.header("Cache-Control") == "no-store"


def test_reason_and_description_defaults_and_detail() -> None:
    err = InvalidProofError(Reason.HTU_MISMATCH, detail={"expected": "x"})
    assert err.reason is Reason.HTU_MISMATCH
    assert err.description == "htu mismatch"
    assert err.detail == {"expected": "x"}
    assert InvalidProofError().reason is Reason.MALFORMED
    assert InvalidProofError(description="custom").description == "custom"
    assert isinstance(Reason.MALFORMED, str)


def test_server_configuration_error_is_also_a_value_error() -> None:
    assert isinstance(ServerConfigurationError(), ValueError)


# -- AS rendering ------------------------------------------------------------------------


def test_as_invalid_proof_is_400_json_without_challenge() -> None:
    response = InvalidProofError(Reason.BAD_SIGNATURE).as_response(role="as")
    assert response.status == 400
    assert response.header("WWW-Authenticate") is None
    assert json.loads(response.body)["error"] == "invalid_dpop_proof"


def test_as_use_nonce_carries_dpop_nonce_fig20() -> None:
    response = UseNonceError(nonce=NONCE).as_response(role="as")
    assert response.status == 400
    assert response.header("DPoP-Nonce") == NONCE
    assert json.loads(response.body)["error"] == "use_dpop_nonce"


def test_as_invalid_client_with_basic_challenge() -> None:
    with_scheme = InvalidClientError(challenge_scheme="Basic").as_response(role="as")
    assert with_scheme.status == 401
    assert with_scheme.header("WWW-Authenticate") == "Basic"
    without = InvalidClientError().as_response(role="as")
    assert without.header("WWW-Authenticate") is None


def test_unavailable_is_503_with_retry_after_and_no_challenge() -> None:
    for err in (TemporarilyUnavailableError(), ReplayStoreError(Reason.STORE_FULL)):
        for role in ("as", "rs"):
            response = err.as_response(role=role)
            assert response.status == 503
            assert response.header("Retry-After") == "1"
            assert response.header("WWW-Authenticate") is None


# -- RS rendering ------------------------------------------------------------------------


def test_rs_invalid_proof_is_401_with_dpop_challenge_and_algs() -> None:
    algs = ProofPolicy(algorithms=frozenset({"ES256", "PS256"})).algs_param.split()
    response = InvalidProofError(Reason.HTU_MISMATCH).as_response(role="rs", algs=algs)
    assert response.status == 401
    (challenge,) = parse_challenges(response.header("WWW-Authenticate") or "")
    assert challenge.scheme == "DPoP"
    assert challenge.params["error"] == "invalid_dpop_proof"
    assert challenge.params["algs"] == "ES256 PS256"
    assert "error_description" in challenge.params


def test_fig16_invalid_key_binding_renders_exactly() -> None:
    vec = vector("rfc9449-fig16-www-authenticate-invalid-key-binding.json")
    err = InvalidTokenError(Reason.JKT_MISMATCH, "Invalid DPoP key binding")
    assert err.www_authenticate(algs=["ES256"]) == vec["field_value"]


def test_fig24_rs_use_dpop_nonce_renders_exactly_with_nonce_header() -> None:
    vec = vector("rfc9449-fig24-rs-use-dpop-nonce.json")
    err = UseNonceError(description="Resource server requires nonce in DPoP proof", nonce=NONCE)
    response = err.as_response(role="rs")
    assert response.status == vec["status"]
    assert response.header("WWW-Authenticate") == vec["field_value"]
    assert response.header("DPoP-Nonce") == vec["dpop_nonce"]


def test_rs18_no_credentials_fig17_has_no_error_in_any_challenge() -> None:
    # RS-18: to a request without credentials the RS answers with bare challenges.
    vec = vector("rfc9449-fig17-www-authenticate-bearer-and-dpop.json")
    value = ", ".join([build_challenge("Bearer"), build_challenge("DPoP", {"algs": "ES256 PS256"})])
    assert value == vec["field_value"]
    assert all("error" not in c.params for c in parse_challenges(value))


def test_rs19_bearer_request_gets_the_error_on_bearer_only_fig18() -> None:
    vec = vector("rfc9449-fig18-www-authenticate-bearer-invalid-token.json")
    err = InvalidTokenError(description="Invalid token")
    value = err.www_authenticate(algs=["ES256", "PS256"], bearer=True, bearer_error=True)
    assert value == vec["field_value"]
    response = err.as_response(role="rs", algs=["ES256", "PS256"], bearer=True, bearer_error=True)
    assert response.header("WWW-Authenticate") == vec["field_value"]


def test_rs19_dpop_request_gets_the_error_on_dpop_only() -> None:
    err = InvalidProofError(Reason.BAD_SIGNATURE)
    bearer, dpop = parse_challenges(err.www_authenticate(algs=["ES256"], bearer=True))
    assert bearer.is_scheme("Bearer")
    assert "error" not in bearer.params
    assert dpop.params["error"] == "invalid_dpop_proof"
    assert dpop.params["algs"] == "ES256"


def test_rs20_ambiguous_request_gets_the_error_on_both_fig19() -> None:
    vec = vector("rfc9449-fig19-www-authenticate-ambiguous.json")
    err = InvalidRequestError(
        Reason.MULTIPLE_AUTHORIZATION, "Multiple methods used to include access token"
    )
    response = err.as_response(role="rs", algs=["ES256", "PS256"], bearer=True)
    assert response.status == vec["status"] == 400
    parsed = parse_challenges(response.header("WWW-Authenticate") or "")
    assert [{"scheme": c.scheme, "params": dict(c.params)} for c in parsed] == vec["parsed"]
    # Also when the caller marks the Bearer side as the one used.
    both = parse_challenges(err.www_authenticate(bearer=True, bearer_error=True))
    assert all(c.params["error"] == "invalid_request" for c in both)


def test_rs_insufficient_scope_is_403_with_scope() -> None:
    err = InsufficientScopeError(scope="read write")
    response = err.as_response(role="rs", algs=["ES256"])
    assert response.status == 403
    (challenge,) = parse_challenges(response.header("WWW-Authenticate") or "")
    assert challenge.params["error"] == "insufficient_scope"
    assert challenge.params["scope"] == "read write"
    no_scope = parse_challenges(InsufficientScopeError().www_authenticate())[0]
    assert "scope" not in no_scope.params


def test_rs_realm_goes_on_every_challenge_and_scheme_spelling_is_kept() -> None:
    err = InvalidTokenError()
    bearer, dpop = parse_challenges(err.www_authenticate(realm="api", bearer=True))
    assert bearer.params["realm"] == dpop.params["realm"] == "api"
    (lower,) = parse_challenges(err.www_authenticate(scheme="dpop"))
    assert lower.scheme == "dpop"
    (other,) = parse_challenges(err.www_authenticate(scheme="Bearer"))
    assert other.scheme == "DPoP"


def test_rs_use_nonce_carries_dpop_nonce_and_no_body_secrets() -> None:
    response = NonceIssuer([b"s" * 32]).challenge(now=NOW).as_response(role="rs")
    assert response.status == 401
    nonce = response.header("DPoP-Nonce")
    assert nonce is not None
    assert nonce.encode() not in response.body


# -- descriptions never echo expected values ----------------------------------------------


def _rendered(err: DPoPError) -> str:
    as_resp = err.as_response(role="as")
    rs_resp = err.as_response(role="rs", algs=["ES256"], bearer=True)
    return " ".join(
        [err.description, as_resp.body.decode(), rs_resp.body.decode()]
        + [v for _, v in rs_resp.headers]
    )


def test_description_never_contains_the_expected_htu_ath_jkt_or_htm() -> None:
    key = DPoPKey.generate("ES256")
    other = DPoPKey.generate("ES256")
    secret_path = "https://internal.example/secret-path-7f3a"
    proof = create_proof(key, htm="GET", htu=HTU, access_token="token-A", now=NOW)

    cases: list[tuple[dict[str, Any], Reason, str]] = [
        ({"htm": "GET", "htu": secret_path}, Reason.HTU_MISMATCH, secret_path),
        ({"htm": "PATCHSECRET", "htu": HTU}, Reason.HTM_MISMATCH, "PATCHSECRET"),
        (
            {"htm": "GET", "htu": HTU, "access_token": "token-B"},
            Reason.ATH_MISMATCH,
            access_token_hash("token-B"),  # the ath the server expected
        ),
        (
            {"htm": "GET", "htu": HTU, "access_token": "token-A", "expected_jkt": other.jkt},
            Reason.JKT_MISMATCH,
            other.jkt,
        ),
    ]
    for kwargs, reason, expected_value in cases:
        with pytest.raises(InvalidProofError) as info:
            verify_proof(proof, now=NOW, **kwargs)
        assert info.value.reason is reason
        assert expected_value not in _rendered(info.value)
        if reason in (Reason.HTU_MISMATCH, Reason.HTM_MISMATCH):
            # The expected value is kept for logs only.
            assert info.value.detail["expected"] == kwargs[reason.value[:3]]


def test_error_module_docstring_draws_the_tree() -> None:
    doc = errors_module.__doc__ or ""
    for cls in all_error_classes():
        assert cls.__name__ in doc


@pytest.mark.parametrize(
    "text",
    ['bad "token"', "back\\slash", "café", "two\nlines", "tab\there", "\x00", "\u20ac"],
)
def test_x9_any_description_renders_a_valid_challenge(text: str) -> None:
    # A description may quote peer input (a parameter name, a library's message): the
    # RS challenge must still render, within RFC 6750's character set, never a 500.
    for err in (InvalidTokenError(description=text), InsufficientScopeError(scope=text)):
        response = err.as_response(role="rs", algs=["ES256"], bearer=True, bearer_error=True)
        assert response.status in (401, 403)
        challenges = parse_challenges(response.header("WWW-Authenticate") or "")
        for challenge in challenges:
            for name in ("error_description", "scope"):
                if name in challenge.params:
                    assert RFC6750_CHARS.fullmatch(challenge.params[name])
        # The JSON body keeps the text as it is (JSON can carry any character).
        assert json.loads(response.body)["error_description"] == err.description
