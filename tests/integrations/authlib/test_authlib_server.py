"""Authlib's authorization server with dpopkit's DPoP layer, over real HTTP on 127.0.0.1.

Driven by dpopkit's client (TokenClient, DPoPAuth), by requests-oauth2client and by
hand-made requests for the negatives; every refusal is asserted by status and wire
``error`` code, and a refused token request must leave its code usable.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from requests_oauth2client import ClientSecretBasic, DPoPToken, InvalidGrant, OAuth2Client

from dpopkit import DPoPKey
from dpopkit.client.requests import DPoPAuth
from dpopkit.client.tokens import TokenClient, pkce_pair
from dpopkit.core.proof import create_proof
from dpopkit.demo.api import create_whoami_app
from tests.live import serve_in_thread

from .conftest import CALLBACK, AuthlibAS

SECRETS = {"rp": "rp-secret-value", "rp-nonce": "rp-nonce-secret-value"}


def _basic(client_id: str) -> dict[str, str]:
    raw = f"{client_id}:{SECRETS[client_id]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return out


def _client(issuer: str, client_id: str, key: DPoPKey) -> TokenClient:
    return TokenClient.from_issuer(
        issuer,
        key=key,
        client_id=client_id,
        client_secret=SECRETS.get(client_id),
        allow_insecure_http=True,
    )


class Code:
    """An authorization code obtained through the test-mode authorization endpoint."""

    def __init__(self, issuer: str, client_id: str, *, dpop_jkt: str | None) -> None:
        self.verifier, challenge = pkce_pair()
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "scope": "read",
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if dpop_jkt is not None:
            query["dpop_jkt"] = dpop_jkt
        response = requests.get(
            f"{issuer}/authorize?{urlencode(query)}", allow_redirects=False, timeout=5
        )
        assert response.status_code == 302, response.text
        self.callback = parse_qs(urlsplit(response.headers["Location"]).query)
        self.code = self.callback["code"][0]
        self.client_id = client_id

    def form(self, *, verifier: str | None = None) -> dict[str, str]:
        form = {
            "grant_type": "authorization_code",
            "code": self.code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier or self.verifier,
        }
        if self.client_id not in SECRETS:
            form["client_id"] = self.client_id
        return form


def _post_token(
    issuer: str,
    form: dict[str, str],
    *,
    key: DPoPKey | None,
    client_id: str | None = None,
    htu: str | None = None,
    nonce: str | None = None,
    proof: str | None = None,
) -> requests.Response:
    headers = _basic(client_id) if client_id in SECRETS else {}
    if proof is None and key is not None:
        proof = create_proof(
            key, htm="POST", htu=htu or f"{issuer}/token", nonce=nonce, allow_insecure_http=True
        )
    if proof is not None:
        headers["DPoP"] = proof
    return requests.post(f"{issuer}/token", data=form, headers=headers, timeout=5)


def _error(response: requests.Response) -> tuple[int, str]:
    return response.status_code, str(response.json().get("error"))


# -- the positive paths --------------------------------------------------------------------------


def test_dpopkit_client_gets_bound_tokens_for_every_grant(authlib_as: AuthlibAS) -> None:
    """AS-1, AS-2, AS-3, AS-10, AS-8: client credentials, code (dpop_jkt, PKCE) and refresh
    through dpopkit's TokenClient; JWT access tokens carry ``cnf.jkt`` (RFC 9449 §6.1)."""
    issuer = authlib_as.issuer
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=5).json()
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    key = DPoPKey.generate("ES256")
    service = _client(issuer, "rp", key).client_credentials(scope="read")
    assert service.token_type == "DPoP"
    assert _claims(service.access_token)["cnf"] == {"jkt": key.jkt}

    spa = _client(issuer, "spa", key)
    request = spa.authorization_request(redirect_uri=CALLBACK, scope="read")
    redirect = requests.get(request.url, allow_redirects=False, timeout=5)
    tokens = spa.exchange_code(request, redirect.headers["Location"])
    assert tokens.token_type == "DPoP"
    assert "dpop_jkt" not in tokens.raw  # the stored thumbprint never reaches the client
    claims = _claims(tokens.access_token)
    assert claims["cnf"] == {"jkt": key.jkt}
    assert claims["sub"] == "alice"
    refreshed = spa.refresh(tokens)
    assert refreshed.token_type == "DPoP"
    assert _claims(refreshed.access_token)["cnf"] == {"jkt": key.jkt}

    # Authlib's ResourceProtector with dpopkit's validator accepts it under DPoP (RS-3).
    api = requests.get(
        f"{issuer}/api/whoami",
        auth=DPoPAuth(key, token=refreshed.access_token, allow_insecure_http=True),
        timeout=5,
    )
    assert api.status_code == 200, api.text
    assert api.json()["cnf"] == {"jkt": key.jkt}


def test_requests_oauth2client_gets_bound_tokens(authlib_as: AuthlibAS) -> None:
    """AS-1, AS-2, AS-5, AS-6, AS-21: an independent client, client credentials and the
    code flow with ``dpop_jkt`` and refresh; a refresh with another key is refused."""
    issuer = authlib_as.issuer

    def client(client_id: str, secret: str | None) -> Any:
        return OAuth2Client.from_discovery_endpoint(
            issuer + "/.well-known/oauth-authorization-server",
            issuer=issuer,
            auth=ClientSecretBasic(client_id, secret) if secret else client_id,
            redirect_uri=CALLBACK,
            testing=True,
        )

    token = client("rp", SECRETS["rp"]).client_credentials(scope="read", dpop=True)
    assert isinstance(token, DPoPToken)
    assert _claims(token.access_token)["cnf"]["jkt"] == token.dpop_key.private_key.thumbprint()

    spa = client("spa", None)
    azr = spa.authorization_request(scope="read", dpop=True)
    redirect = requests.get(str(azr.uri), allow_redirects=False, timeout=5)
    code = spa.authorization_code(azr.validate_callback(redirect.headers["Location"]))
    assert isinstance(code, DPoPToken)
    jkt = azr.dpop_key.private_key.thumbprint()
    assert _claims(code.access_token)["cnf"]["jkt"] == jkt
    refreshed = spa.refresh_token(code)
    assert isinstance(refreshed, DPoPToken)
    assert _claims(refreshed.access_token)["cnf"]["jkt"] == jkt
    # The old refresh token was rotated out (Authlib's own revocation).
    with pytest.raises(InvalidGrant):
        spa.refresh_token(code)


def test_tokens_pass_dpopkit_resource_server_checks(authlib_as: AuthlibAS) -> None:
    """RS-1, RS-2, RS-3, AS-27: dpopkit's own resource server (``serve-api``'s app, keys by
    discovery from the Authlib issuer) accepts the Authlib tokens and refuses a Bearer
    downgrade and a proof by another key."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    tokens = _client(issuer, "rp", key).client_credentials(scope="read")

    def build(base: str) -> Any:
        return create_whoami_app(
            issuer=issuer, public_origin=base, audience=issuer, allow_insecure_http=True
        )

    with serve_in_thread(build) as api:
        url = f"{api}/api/whoami"
        good = requests.get(
            url, auth=DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True), timeout=5
        )
        assert good.status_code == 200, good.text
        bearer = requests.get(
            url, headers={"Authorization": f"Bearer {tokens.access_token}"}, timeout=5
        )
        assert bearer.status_code == 401
        other = DPoPKey.generate("ES256")
        stolen = requests.get(
            url,
            auth=DPoPAuth(other, token=tokens.access_token, allow_insecure_http=True),
            timeout=5,
        )
        assert stolen.status_code == 401
        assert 'error="invalid_token"' in stolen.headers["WWW-Authenticate"]


def test_clients_without_dpop_keep_getting_bearer_tokens(authlib_as: AuthlibAS) -> None:
    """AS-4, AS-9: a client that sends no proof and is not registered with
    ``dpop_bound_access_tokens`` gets a Bearer token, usable as Bearer (migration)."""
    issuer = authlib_as.issuer
    response = requests.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=("legacy", "legacy-secret-value"),
        timeout=5,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in _claims(body["access_token"])
    api = requests.get(
        f"{issuer}/api/whoami",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=5,
    )
    assert api.status_code == 200, api.text
    # The unbound token under the DPoP scheme is refused (RS-25).
    key = DPoPKey.generate("ES256")
    as_dpop = requests.get(
        f"{issuer}/api/whoami",
        auth=DPoPAuth(key, token=body["access_token"], allow_insecure_http=True),
        timeout=5,
    )
    assert as_dpop.status_code == 401
    assert 'error="invalid_token"' in as_dpop.headers["WWW-Authenticate"]


# -- the negatives ---------------------------------------------------------------------------------


def test_bound_client_without_proof_is_refused(authlib_as: AuthlibAS) -> None:
    """AS-9: a ``dpop_bound_access_tokens`` client must send a proof (RFC 9449 §5.2)."""
    response = _post_token(
        authlib_as.issuer,
        {"grant_type": "client_credentials", "scope": "read"},
        key=None,
        client_id="rp",
    )
    assert _error(response) == (400, "invalid_dpop_proof")


def test_proof_for_another_url_is_refused(authlib_as: AuthlibAS) -> None:
    """AS-1: ``htu`` must be the token endpoint (RFC 9449 §4.3 (9))."""
    response = _post_token(
        authlib_as.issuer,
        {"grant_type": "client_credentials", "scope": "read"},
        key=DPoPKey.generate("ES256"),
        client_id="rp",
        htu=f"{authlib_as.issuer}/other",
    )
    assert _error(response) == (400, "invalid_dpop_proof")


def test_replayed_proof_is_refused(authlib_as: AuthlibAS) -> None:
    """AS-1: a proof's ``jti`` is accepted once (RFC 9449 §11.1)."""
    key = DPoPKey.generate("ES256")
    issuer = authlib_as.issuer
    proof = create_proof(key, htm="POST", htu=f"{issuer}/token", allow_insecure_http=True)
    form = {"grant_type": "client_credentials", "scope": "read"}
    first = _post_token(issuer, form, key=key, client_id="rp", proof=proof)
    assert first.status_code == 200, first.text
    again = _post_token(issuer, form, key=key, client_id="rp", proof=proof)
    assert _error(again) == (400, "invalid_dpop_proof")


def test_missing_nonce_is_use_dpop_nonce_and_the_code_survives(authlib_as: AuthlibAS) -> None:
    """AS-12, AS-18: a client that must use nonces gets 400 ``use_dpop_nonce`` with
    ``DPoP-Nonce``; the retry with that nonce redeems the same code (RFC 9449 §8)."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    code = Code(issuer, "rp-nonce", dpop_jkt=key.jkt)
    first = _post_token(issuer, code.form(), key=key, client_id="rp-nonce")
    assert _error(first) == (400, "use_dpop_nonce")
    nonce = first.headers["DPoP-Nonce"]
    retry = _post_token(issuer, code.form(), key=key, client_id="rp-nonce", nonce=nonce)
    assert retry.status_code == 200, retry.text
    assert retry.json()["token_type"] == "DPoP"
    # dpopkit's client does the round trip by itself.
    tokens = _client(issuer, "rp-nonce", key).client_credentials(scope="read")
    assert tokens.token_type == "DPoP"


def test_code_replay_is_refused(authlib_as: AuthlibAS) -> None:
    """AS-1: a code is redeemed once (RFC 6749 §4.1.2)."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    code = Code(issuer, "spa", dpop_jkt=key.jkt)
    assert _post_token(issuer, code.form(), key=key).status_code == 200
    assert _error(_post_token(issuer, code.form(), key=key)) == (400, "invalid_grant")


def _failing_requests(issuer: str, key: DPoPKey, code: Code) -> dict[str, requests.Response]:
    """One token request per kind of failure, each for the same (still valid) code."""
    used = create_proof(key, htm="POST", htu=f"{issuer}/token", allow_insecure_http=True)
    form = {"grant_type": "client_credentials", "scope": "read"}
    burn = _post_token(issuer, form, key=key, client_id="rp", proof=used)
    assert burn.status_code == 200, burn.text  # recorded by a request that succeeded
    return {
        "htu": _post_token(issuer, code.form(), key=key, htu=f"{issuer}/elsewhere"),
        "dpop_jkt": _post_token(issuer, code.form(), key=DPoPKey.generate("ES256")),
        "no proof": _post_token(issuer, code.form(), key=None),
        "pkce": _post_token(issuer, code.form(verifier=pkce_pair()[0]), key=key),
        "replayed": _post_token(issuer, code.form(), key=key, proof=used),
    }


EXPECTED = {
    "htu": (400, "invalid_dpop_proof"),
    "dpop_jkt": (400, "invalid_grant"),
    "no proof": (400, "invalid_dpop_proof"),
    "pkce": (400, "invalid_grant"),
}


@pytest.fixture
def refused(authlib_as: AuthlibAS) -> tuple[dict[str, requests.Response], Any]:
    key = DPoPKey.generate("ES256")
    code = Code(authlib_as.issuer, "spa", dpop_jkt=key.jkt)
    results = _failing_requests(authlib_as.issuer, key, code)
    return results, lambda: _post_token(authlib_as.issuer, code.form(), key=key)


def test_refused_token_requests_never_burn_the_code(
    refused: tuple[dict[str, requests.Response], Any],
) -> None:
    """AS-1, AS-21: proof for another URL, ``dpop_jkt`` mismatch, missing proof, PKCE
    mismatch, replayed proof: each refused with its code, and the code still redeems."""
    results, redeem = refused
    assert {name: _error(r) for name, r in results.items() if name != "replayed"} == EXPECTED
    # The replayed proof was recorded by another request first; refused at the record.
    assert _error(results["replayed"]) == (400, "invalid_dpop_proof")
    final = redeem()
    assert final.status_code == 200, final.text


def test_refresh_with_another_key_is_refused(authlib_as: AuthlibAS) -> None:
    """AS-5, AS-6: a public client's refresh token needs a proof by its key (RFC 9449 §5);
    a refused refresh does not rotate the token out."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    code = Code(issuer, "spa", dpop_jkt=key.jkt)
    issued = _post_token(issuer, code.form(), key=key).json()
    form = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    form["client_id"] = "spa"
    wrong = _post_token(issuer, form, key=DPoPKey.generate("ES256"))
    assert _error(wrong) == (400, "invalid_grant")
    missing = _post_token(issuer, form, key=None)
    assert _error(missing) == (400, "invalid_dpop_proof")
    right = _post_token(issuer, form, key=key)
    assert right.status_code == 200, right.text
    assert _claims(right.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_bound_token_as_bearer_is_refused(authlib_as: AuthlibAS) -> None:
    """RS-16: a DPoP-bound token under the Bearer scheme is refused (RFC 9449 §7.2)."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    tokens = _client(issuer, "rp", key).client_credentials(scope="read")
    response = requests.get(
        f"{issuer}/api/whoami",
        headers={"Authorization": f"Bearer {tokens.access_token}"},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("problem", ["another url", "another key", "replayed", "no proof"])
def test_resource_protector_refuses_bad_proofs(authlib_as: AuthlibAS, problem: str) -> None:
    """RS-3, RS-4, RS-7: Authlib's ResourceProtector with dpopkit's validator refuses a
    bound token whose proof fails any §4.3 check, with 401 and a DPoP challenge."""
    issuer = authlib_as.issuer
    key = DPoPKey.generate("ES256")
    token = _client(issuer, "rp", key).client_credentials(scope="read").access_token
    url = f"{issuer}/api/whoami"
    signer = DPoPKey.generate("ES256") if problem == "another key" else key
    htu = f"{issuer}/api/other" if problem == "another url" else url
    proof = create_proof(signer, htm="GET", htu=htu, access_token=token, allow_insecure_http=True)
    headers = {"Authorization": f"DPoP {token}"}
    if problem != "no proof":
        headers["DPoP"] = proof
    if problem == "replayed":
        assert requests.get(url, headers=headers, timeout=5).status_code == 200
    response = requests.get(url, headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("DPoP")
    expected = "invalid_token" if problem == "another key" else "invalid_dpop_proof"
    assert response.json()["error"] == expected


def test_malformed_dpop_jkt_is_refused_at_the_authorization_endpoint(
    authlib_as: AuthlibAS,
) -> None:
    """AS-21: ``dpop_jkt`` must be a JWK SHA-256 thumbprint (RFC 9449 §10): the error
    goes back to the client's redirect URI as ``invalid_request``."""
    query = {
        "response_type": "code",
        "client_id": "spa",
        "redirect_uri": CALLBACK,
        "state": "s1",
        "code_challenge": pkce_pair()[1],
        "code_challenge_method": "S256",
        "dpop_jkt": "not a thumbprint",
    }
    response = requests.get(
        f"{authlib_as.issuer}/authorize?{urlencode(query)}", allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    callback = parse_qs(urlsplit(response.headers["Location"]).query)
    assert callback["error"] == ["invalid_request"]


def test_registering_twice_is_refused() -> None:
    """AS-1: one proof check per request: a second ``register_dpop`` on the same server
    (which would verify and record every proof twice) is refused at once."""
    from authlib.oauth2.rfc6749 import AuthorizationServer

    from dpopkit.integrations.authlib import register_dpop
    from dpopkit.storage.memory import MemoryReplayCache

    server = AuthorizationServer()
    replay = MemoryReplayCache(single_process=True)
    register_dpop(server, token_endpoint="https://as.example/token", replay=replay)
    with pytest.raises(ValueError):
        register_dpop(server, token_endpoint="https://as.example/token", replay=replay)
