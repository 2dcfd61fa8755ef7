"""django-oauth-toolkit with dpopkit's plug-in, driven over real HTTP (RFC 9449).

The example project runs in its own process (SQLite and PostgreSQL); dpopkit's
client and requests-oauth2client get DPoP-bound tokens from it, and every refusal
is checked by status and wire ``error`` code.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from requests_oauth2client import ClientSecretBasic, DPoPToken, InvalidGrant, OAuth2Client

from dpopkit import DPoPKey
from dpopkit.client.requests import DPoPAuth
from dpopkit.client.tokens import TokenClient
from dpopkit.core.proof import create_proof
from dpopkit.demo.api import WHOAMI_PATH, create_whoami_app
from dpopkit.resource import IntrospectionTokens
from tests.live import serve_in_thread

from .conftest import CALLBACK, DOTServer

pytestmark = pytest.mark.slow

SECRETS = {
    "svc": "svc-secret-value-0123",
    "nonced": "nonced-secret-value-0123",
    "legacy": "legacy-secret-value-0123",
}


# -- helpers -----------------------------------------------------------------------------------


def _client(dot: DOTServer, client_id: str, key: DPoPKey | None = None, **kw: Any) -> TokenClient:
    return TokenClient.from_issuer(
        dot.base,
        key=key or DPoPKey.generate(),
        client_id=client_id,
        client_secret=SECRETS.get(client_id),
        allow_insecure_http=True,
        **kw,
    )


def _token_post(
    dot: DOTServer,
    form: dict[str, str],
    *,
    key: DPoPKey | None,
    client: str | None = None,
    htu: str | None = None,
    nonce: str | None = None,
    proof: str | None = None,
) -> requests.Response:
    """A raw token request with an optional proof made here."""
    url = dot.base + "/token/"
    headers = {}
    if proof is None and key is not None:
        proof = create_proof(key, htm="POST", htu=htu or url, nonce=nonce, allow_insecure_http=True)
    if proof is not None:
        headers["DPoP"] = proof
    auth = (client, SECRETS[client]) if client is not None else None
    return requests.post(url, data=form, headers=headers, auth=auth, timeout=10)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _code(dot: DOTServer, client_id: str, *, challenge: str, jkt: str | None) -> str:
    """Run the authorization endpoint (test_mode_user approves); return the code."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "scope": "read",
        "state": "s-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if jkt is not None:
        params["dpop_jkt"] = jkt
    response = requests.get(
        dot.base + "/authorize/?" + urlencode(params), allow_redirects=False, timeout=10
    )
    assert response.status_code == 302, response.text
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    return query["code"][0]


def _code_form(client_id: str, code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }


def _error(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def _introspect(dot: DOTServer, token: str) -> dict[str, Any]:
    response = requests.post(
        dot.base + "/introspect/", data={"token": token}, auth=("svc", SECRETS["svc"]), timeout=10
    )
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


# -- dpopkit's client --------------------------------------------------------------------------


def test_dot_client_credentials_bound_and_accepted_by_drf_and_decorator(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §5 DPoP token from DOT; DRF and the decorator accept it (§7.1)."""
    key = DPoPKey.generate()
    tokens = _client(dot, "svc", key).client_credentials(scope="read")
    assert tokens.token_type == "DPoP"
    auth = DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True)
    who = requests.get(dot.base + "/api/whoami", auth=auth, timeout=10)
    assert who.status_code == 200, who.text
    assert who.json() == {"client_id": "svc", "scope": "read", "scheme": "DPoP", "jkt": key.jkt}
    hello = requests.get(dot.base + "/api/hello", auth=auth, timeout=10)
    assert hello.status_code == 200
    assert hello.json() == {"hello": "svc"}
    # RFC 7662 §2.2, RFC 9449 §6.2: introspection answers cnf and token_type.
    info = _introspect(dot, tokens.access_token)
    assert info["active"] is True
    assert info["cnf"] == {"jkt": key.jkt}
    assert info["token_type"] == "DPoP"


def test_dot_metadata_lists_dpop_algorithms(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §5.1 dpop_signing_alg_values_supported in DOT's RFC 8414 document."""
    meta = requests.get(dot.base + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert meta["token_endpoint"] == dot.base + "/token/"


def test_dot_nonce_round_trip_with_dpopkit_client(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §8: use_dpop_nonce then success; the client retries by itself."""
    tokens = _client(dot, "nonced", auth_method="client_secret_post").client_credentials()
    assert tokens.token_type == "DPoP"


def test_dot_code_flow_dpop_jkt_and_refresh_with_dpopkit_client(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §10 dpop_jkt, §5 bound public refresh token; another key is refused."""
    key = DPoPKey.generate()
    client = _client(dot, "spa", key)
    request = client.authorization_request(redirect_uri=CALLBACK, scope="read")
    callback = requests.get(request.url, allow_redirects=False, timeout=10).headers["Location"]
    tokens = client.exchange_code(request, callback)
    assert tokens.token_type == "DPoP"
    assert _introspect(dot, tokens.access_token)["cnf"] == {"jkt": key.jkt}
    refreshed = client.refresh(tokens)
    assert refreshed.token_type == "DPoP"
    assert refreshed.refresh_token != tokens.refresh_token
    assert refreshed.refresh_token is not None
    # Key mismatch at refresh (RFC 9449 §5): invalid_grant, and the token stays usable.
    other = _token_post(
        dot,
        {
            "grant_type": "refresh_token",
            "client_id": "spa",
            "refresh_token": refreshed.refresh_token,
        },
        key=DPoPKey.generate(),
    )
    assert _error(other) == (400, "invalid_grant")
    none = _token_post(
        dot,
        {
            "grant_type": "refresh_token",
            "client_id": "spa",
            "refresh_token": refreshed.refresh_token,
        },
        key=None,
    )
    assert _error(none) == (400, "invalid_dpop_proof")
    again = _token_post(
        dot,
        {
            "grant_type": "refresh_token",
            "client_id": "spa",
            "refresh_token": refreshed.refresh_token,
        },
        key=key,
    )
    assert again.status_code == 200, again.text
    assert again.json()["token_type"] == "DPoP"


# -- negatives at the token endpoint ------------------------------------------------------------


def test_dot_proof_for_another_url_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §4.3 (9): htu of another endpoint -> 400 invalid_dpop_proof."""
    response = _token_post(
        dot,
        {"grant_type": "client_credentials"},
        key=DPoPKey.generate(),
        client="svc",
        htu=dot.base + "/introspect/",
    )
    assert _error(response) == (400, "invalid_dpop_proof")


def test_dot_replayed_proof_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §11.1: the same proof twice -> the second is invalid_dpop_proof."""
    key = DPoPKey.generate()
    proof = create_proof(key, htm="POST", htu=dot.base + "/token/", allow_insecure_http=True)
    first = _token_post(
        dot, {"grant_type": "client_credentials"}, key=key, client="svc", proof=proof
    )
    assert first.status_code == 200, first.text
    second = _token_post(
        dot, {"grant_type": "client_credentials"}, key=key, client="svc", proof=proof
    )
    assert _error(second) == (400, "invalid_dpop_proof")


def test_dot_missing_proof_for_bound_client_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §5.2: dpop_bound_access_tokens client without proof -> 400."""
    response = _token_post(dot, {"grant_type": "client_credentials"}, key=None, client="svc")
    assert _error(response) == (400, "invalid_dpop_proof")


def test_dot_missing_nonce_gets_use_dpop_nonce(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §8: a proof without the required nonce -> 400 use_dpop_nonce + header."""
    form = {
        "grant_type": "client_credentials",
        "client_id": "nonced",
        "client_secret": SECRETS["nonced"],
    }
    key = DPoPKey.generate()
    url = dot.base + "/token/"
    response = requests.post(
        url,
        data=form,
        headers={"DPoP": create_proof(key, htm="POST", htu=url, allow_insecure_http=True)},
        timeout=10,
    )
    assert _error(response) == (400, "use_dpop_nonce")
    nonce = response.headers["DPoP-Nonce"]
    retry = requests.post(
        url,
        data=form,
        headers={
            "DPoP": create_proof(key, htm="POST", htu=url, nonce=nonce, allow_insecure_http=True)
        },
        timeout=10,
    )
    assert retry.status_code == 200, retry.text
    assert retry.json()["token_type"] == "DPoP"


def test_dot_code_replay_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 6749 §4.1.2: a code redeemed twice -> invalid_grant."""
    key = DPoPKey.generate()
    verifier, challenge = _pkce()
    code = _code(dot, "spa", challenge=challenge, jkt=key.jkt)
    first = _token_post(dot, _code_form("spa", code, verifier), key=key)
    assert first.status_code == 200, first.text
    second = _token_post(dot, _code_form("spa", code, verifier), key=key)
    assert _error(second) == (400, "invalid_grant")


def test_dot_pkce_mismatch_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 7636 §4.6: a wrong code_verifier -> invalid_grant."""
    key = DPoPKey.generate()
    _, challenge = _pkce()
    code = _code(dot, "spa", challenge=challenge, jkt=key.jkt)
    wrong, _ = _pkce()
    response = _token_post(dot, _code_form("spa", code, wrong), key=key)
    assert _error(response) == (400, "invalid_grant")


def test_dot_dpop_jkt_mismatch_is_refused_and_does_not_burn_the_code(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §10: a proof by another key than dpop_jkt -> invalid_grant."""
    key = DPoPKey.generate()
    verifier, challenge = _pkce()
    code = _code(dot, "spa", challenge=challenge, jkt=key.jkt)
    other = _token_post(dot, _code_form("spa", code, verifier), key=DPoPKey.generate())
    assert _error(other) == (400, "invalid_grant")
    missing = _token_post(dot, _code_form("spa", code, verifier), key=None)
    assert _error(missing) == (400, "invalid_dpop_proof")
    good = _token_post(dot, _code_form("spa", code, verifier), key=key)
    assert good.status_code == 200, good.text


def test_dot_failing_proof_and_nonce_round_trip_do_not_burn_the_code(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §8, §4.3: nothing is consumed before the proof passed."""
    key = DPoPKey.generate()
    verifier, challenge = _pkce()
    code = _code(dot, "spa-nonce", challenge=challenge, jkt=key.jkt)
    form = _code_form("spa-nonce", code, verifier)
    bad = _token_post(dot, form, key=key, htu=dot.base + "/elsewhere")
    assert _error(bad) == (400, "invalid_dpop_proof")
    challenge_response = _token_post(dot, form, key=key)
    assert _error(challenge_response) == (400, "use_dpop_nonce")
    nonce = challenge_response.headers["DPoP-Nonce"]
    good = _token_post(dot, form, key=key, nonce=nonce)
    assert good.status_code == 200, good.text
    assert good.json()["token_type"] == "DPoP"


def test_dot_malformed_dpop_jkt_is_an_error_redirect(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §10: a malformed dpop_jkt -> invalid_request to the client."""
    _, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": "spa",
        "redirect_uri": CALLBACK,
        "scope": "read",
        "state": "xyz",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "dpop_jkt": "not a thumbprint",
    }
    response = requests.get(
        dot.base + "/authorize/?" + urlencode(params), allow_redirects=False, timeout=10
    )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["invalid_request"]
    assert "code" not in query


# -- at the resource ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/whoami", "/api/hello"])
def test_dot_bound_token_as_bearer_is_refused(dot: DOTServer, path: str) -> None:
    """HD-16: RFC 9449 §7.2: a DPoP-bound token sent as Bearer -> 401 invalid_token."""
    tokens = _client(dot, "svc").client_credentials(scope="read")
    response = requests.get(
        dot.base + path, headers={"Authorization": f"Bearer {tokens.access_token}"}, timeout=10
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.json().get("error", response.json().get("detail", {}).get("error")) == (
        "invalid_token"
    )


@pytest.mark.parametrize("path", ["/api/whoami", "/api/hello"])
def test_dot_proof_by_another_key_is_refused_at_the_resource(dot: DOTServer, path: str) -> None:
    """HD-22: RFC 9449 §7.1, §6: a proof by another key than cnf.jkt -> 401 invalid_token."""
    tokens = _client(dot, "svc").client_credentials(scope="read")
    auth = DPoPAuth(DPoPKey.generate(), token=tokens.access_token, allow_insecure_http=True)
    response = requests.get(dot.base + path, auth=auth, timeout=10)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_dot_clients_without_dpop_keep_working(dot: DOTServer) -> None:
    """HD-22: RFC 6750: a client that sends no proof still gets a Bearer token, used as Bearer."""
    response = _token_post(dot, {"grant_type": "client_credentials"}, key=None, client="legacy")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert _introspect(dot, body["access_token"])["token_type"] == "Bearer"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    who = requests.get(dot.base + "/api/whoami", headers=headers, timeout=10)
    assert who.status_code == 200
    assert who.json()["scheme"] == "Bearer"
    # RFC 9449 §7.1 (RS-25): an unbound token with the DPoP scheme is refused.
    auth = DPoPAuth(DPoPKey.generate(), token=body["access_token"], allow_insecure_http=True)
    assert requests.get(dot.base + "/api/whoami", auth=auth, timeout=10).status_code == 401


def test_dot_no_credentials_gets_a_dpop_challenge(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §7.1: no Authorization -> 401 with a DPoP challenge, no error."""
    response = requests.get(dot.base + "/api/whoami", timeout=10)
    assert response.status_code == 401
    assert "DPoP" in response.headers["WWW-Authenticate"]
    assert "error=" not in response.headers["WWW-Authenticate"]


def test_dot_tokens_pass_dpopkit_resource_server_checks(dot: DOTServer) -> None:
    """HD-22: RFC 7662, RFC 9449 §6.2: dpopkit's RS accepts DOT's tokens via introspection."""
    key = DPoPKey.generate()

    def build(base: str) -> Any:
        tokens = IntrospectionTokens(
            endpoint=dot.base + "/introspect/",
            client_id="svc",
            client_secret=SECRETS["svc"],
            audience=base,
            allow_insecure_http=True,
        )
        return create_whoami_app(
            issuer=dot.base, public_origin=base, tokens=tokens, allow_insecure_http=True
        )

    with serve_in_thread(build) as api:
        tokens = _client(dot, "svc", key).client_credentials(scope="read", resource=api)
        auth = DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True)
        ok = requests.get(api + WHOAMI_PATH, auth=auth, timeout=10)
        assert ok.status_code == 200, ok.text
        bearer = requests.get(
            api + WHOAMI_PATH,
            headers={"Authorization": f"Bearer {tokens.access_token}"},
            timeout=10,
        )
        assert bearer.status_code == 401
        assert 'error="invalid_token"' in bearer.headers["WWW-Authenticate"]


# -- requests-oauth2client ---------------------------------------------------------------------


def _roc(dot: DOTServer, client_id: str, secret: str | None) -> Any:
    auth: Any = ClientSecretBasic(client_id, secret) if secret else client_id
    return OAuth2Client.from_discovery_endpoint(
        dot.base + "/.well-known/oauth-authorization-server",
        issuer=dot.base,
        auth=auth,
        redirect_uri=CALLBACK,
        testing=True,
    )


def test_dot_requests_oauth2client_client_credentials(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §5: requests-oauth2client gets a DPoP token and calls the API."""
    client = _roc(dot, "svc", SECRETS["svc"])
    token = client.client_credentials(scope="read", dpop=True)
    assert isinstance(token, DPoPToken)
    assert token.token_type.lower() == "dpop"
    jkt = token.dpop_key.private_key.thumbprint()
    assert _introspect(dot, token.access_token)["cnf"] == {"jkt": jkt}
    who = requests.get(dot.base + "/api/whoami", auth=token, timeout=10)
    assert who.status_code == 200, who.text
    assert who.json()["jkt"] == jkt


def test_dot_requests_oauth2client_code_flow_and_refresh(dot: DOTServer) -> None:
    """HD-22: RFC 9449 §10, §5: code with dpop_jkt, refresh with the same key."""
    client = _roc(dot, "spa", None)
    azr = client.authorization_request(scope="read", dpop=True)
    callback = requests.get(str(azr.uri), allow_redirects=False, timeout=10).headers["Location"]
    response = azr.validate_callback(callback)
    token = client.authorization_code(response)
    assert isinstance(token, DPoPToken)
    jkt = azr.dpop_key.private_key.thumbprint()
    assert _introspect(dot, token.access_token)["cnf"] == {"jkt": jkt}
    refreshed = client.refresh_token(token)
    assert isinstance(refreshed, DPoPToken)
    assert _introspect(dot, refreshed.access_token)["cnf"] == {"jkt": jkt}
    # RFC 6749 §10.4: the rotated-out refresh token is dead.
    with pytest.raises(InvalidGrant):
        client.refresh_token(token)


def test_dot_token_for_another_resource_is_refused(dot: DOTServer) -> None:
    """HD-22: RFC 8707 §2: a token restricted to another resource -> 401 invalid_token."""
    key = DPoPKey.generate()
    tokens = _client(dot, "svc", key).client_credentials(
        scope="read", resource="https://elsewhere.example/api"
    )
    auth = DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True)
    response = requests.get(dot.base + "/api/whoami", auth=auth, timeout=10)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
