"""RFC 9207 authorization-response ``iss`` checks of ``TokenClient.exchange_code``."""

from __future__ import annotations

import pytest

from dpopkit import DPoPKey, Reason, TokenResponseError
from dpopkit.client.tokens import ServerMetadata

from .servers import Servers
from .test_tokens import authorize, make_client

#: (AS advertises iss support, iss the AS sends: "same" / "none" / "other") → refusal reason
CASES: dict[tuple[bool, str], Reason | None] = {
    (True, "same"): None,
    (True, "none"): Reason.ISS_MISSING,
    (True, "other"): Reason.ISS_MISMATCH,
    (False, "same"): None,
    (False, "none"): None,  # RFC 9207 §2.4: without the promise a missing iss is allowed
    (False, "other"): Reason.ISS_MISMATCH,
}


def _sent_iss(servers: Servers, kind: str) -> str:
    return {"same": servers.state.issuer, "none": "", "other": servers.state.issuer + "/x"}[kind]


@pytest.mark.parametrize("callback", ["code", "error"])
@pytest.mark.parametrize(("advertised", "kind"), list(CASES))
def test_callback_iss_rfc9207(
    servers: Servers, key: DPoPKey, advertised: bool, kind: str, callback: str
) -> None:
    """HD-17: a callback without ``iss`` from an AS that advertises it is refused (RFC 9207 §2.4).

    A wrong ``iss`` is refused whether or not the AS advertises it, success and
    error callbacks alike, and nothing is sent to the token endpoint then.
    """
    servers.state.offer_par = False
    servers.state.advertise_iss = advertised
    servers.state.callback_iss = _sent_iss(servers, kind)
    client = make_client(servers, key)
    assert client.metadata.authorization_response_iss_parameter_supported is advertised
    extra = {"error": "access_denied"} if callback == "error" else None
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb", extra=extra)
    location = authorize(servers, request)
    expected = CASES[(advertised, kind)]
    if expected is None and callback == "code":
        tokens = client.exchange_code(request, location)
        assert tokens.is_dpop
        return
    with pytest.raises(TokenResponseError) as info:
        client.exchange_code(request, location)
    # An error callback with an acceptable iss is still refused, as the error it reports.
    assert info.value.reason is (expected or Reason.TOKEN_RESPONSE)
    assert servers.state.token_requests == []


@pytest.mark.parametrize(
    ("value", "advertised"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False)],
)
def test_iss_support_is_read_from_metadata(value: object, advertised: bool) -> None:
    """HD-17: only the JSON value ``true`` advertises RFC 9207 support (RFC 9207 §3)."""
    data: dict[str, object] = {"issuer": "https://as.example", "token_endpoint": "https://t"}
    if value is not None:
        data["authorization_response_iss_parameter_supported"] = value
    meta = ServerMetadata.from_dict(data)
    assert meta.authorization_response_iss_parameter_supported is advertised
