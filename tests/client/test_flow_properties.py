"""Hypothesis: whatever a server answers, the client flow never loops (SEC-113, SEC-114).

For any sequence of responses (statuses, challenges in any case, nonces present,
missing, repeated or new, JSON bodies or none), one request makes at most
``max_nonce_retries`` retries, each retry carries a new ``jti`` and the nonce the
server sent last, and the only errors are the client's typed ``ClientError``s.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import ClientError, DPoPKey
from dpopkit.client.flow import DONE, DPoPFlow, NonceCache, Retry

from .helpers import claims_of

KEY = DPoPKey.generate("ES256")
NOW = 1_700_000_000.0

schemes = st.sampled_from(["DPoP", "dpop", "DPOP", "Bearer", "Basic"])
errors = st.sampled_from(["use_dpop_nonce", "invalid_dpop_proof", "invalid_token", "other"])
nonces = st.one_of(st.none(), st.sampled_from(["n1", "n2", "n3", "bad nonce", ""]))


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, dict[str, str], dict[str, Any] | None]:
    status = draw(st.sampled_from([200, 400, 401, 403, 500]))
    headers: dict[str, str] = {}
    nonce = draw(nonces)
    if nonce is not None:
        headers[draw(st.sampled_from(["DPoP-Nonce", "dpop-nonce"]))] = nonce
    body: dict[str, Any] | None = None
    if status == 401 and draw(st.booleans()):
        params = f'error="{draw(errors)}"'
        if draw(st.booleans()):
            params += ', algs="ES256 PS256"'
        headers["WWW-Authenticate"] = f"{draw(schemes)} {params}"
    if status == 400 and draw(st.booleans()):
        body = {"error": draw(errors)}
    return status, headers, body


@settings(max_examples=150, deadline=None)
@given(
    answers=st.lists(responses(), min_size=1, max_size=6),
    budget=st.integers(min_value=0, max_value=3),
)
def test_flow_never_loops(
    answers: list[tuple[int, dict[str, str], dict[str, Any] | None]], budget: int
) -> None:
    flow = DPoPFlow(key=KEY, nonces=NonceCache(), clock=lambda: NOW, max_nonce_retries=budget)
    headers = flow.prepare("POST", "https://as.example/token", "AT")
    jtis = [claims_of(headers["DPoP"])["jti"]]
    retries = 0
    for status, hdrs, body in answers:
        try:
            action = flow.on_response(status, hdrs, body)
        except ClientError:
            break
        if action is DONE:
            break
        assert isinstance(action, Retry)
        retries += 1
        claims = claims_of(action.headers["DPoP"])
        sent_nonce = next(v for k, v in hdrs.items() if k.lower() == "dpop-nonce")
        assert claims["nonce"] == sent_nonce
        jtis.append(claims["jti"])
    assert retries <= budget
    assert len(set(jtis)) == len(jtis)
