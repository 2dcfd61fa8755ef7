"""Totality: whatever the headers, the guard returns a principal or raises a DPoPError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpopkit import DPoPError, DPoPKey, Headers, RequestView, create_proof
from dpopkit.resource.guard import ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.storage.memory import MemoryReplayCache
from tests.resource._rs_support import AUDIENCE, ISSUER, NOW, ORIGIN, Clock, Issuer

ISSUER_OBJ = Issuer()
KEY = DPoPKey.generate("ES256")
TOKEN = ISSUER_OBJ.token(jkt=KEY.jkt)
PROOF = create_proof(KEY, htm="GET", htu=f"{ORIGIN}/hello", access_token=TOKEN, now=NOW)
GUARD = ResourceGuard(
    tokens=JWTAccessTokens(issuer=ISSUER, audience=AUDIENCE, jwks=ISSUER_OBJ.jwks()),
    replay=MemoryReplayCache(),
    clock=Clock(),
)

text = st.text(alphabet=st.characters(codec="latin-1"), max_size=300)
segments = st.lists(
    st.sampled_from([*TOKEN.split("."), *PROOF.split("."), "", "e30", "x"]), max_size=4
)
mutated = segments.map(".".join)
authorization = st.one_of(
    text,
    st.builds(
        lambda s, t: f"{s} {t}", st.sampled_from(["DPoP", "dpop", "Bearer", "Basic"]), mutated
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    auth=st.lists(authorization, max_size=2),
    proofs=st.lists(st.one_of(text, mutated), max_size=2),
    method=st.sampled_from(["GET", "POST", "get"]),
    path=st.sampled_from(["/hello", "/hello?access_token=x", "/h%2Fello", "/"]),
)
def test_guard_is_total(auth: list[str], proofs: list[str], method: str, path: str) -> None:
    headers = Headers([*(("Authorization", a) for a in auth), *(("DPoP", p) for p in proofs)])
    view = RequestView(method=method, url=f"{ORIGIN}{path}", headers=headers)
    try:
        principal = GUARD.authenticate(view)
    except DPoPError as error:
        response = GUARD.error_response(error)
        assert response.status in (400, 401, 403, 503)
    else:
        assert principal.jkt == KEY.jkt
