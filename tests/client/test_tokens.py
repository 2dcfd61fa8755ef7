"""Token flows against a real test AS (C-1, C-7, C-8, C-16, C-18..C-22, X-16)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dpopkit import (
    ClientError,
    DPoPKey,
    InvalidClientError,
    InvalidGrantError,
    MissingNonceError,
    Reason,
    TokenResponseError,
    verify_proof,
)
from dpopkit.client.flow import NonceCache
from dpopkit.client.httpx import httpx_sender
from dpopkit.client.senders import AsyncSender, Sender, threaded_urllib_sender
from dpopkit.client.tokens import (
    AsyncTokenClient,
    AuthorizationRequest,
    ServerMetadata,
    TokenClient,
    TokenSet,
    discover,
    pkce_pair,
    register_client,
)

from .helpers import claims_of
from .servers import CLIENT_ID, CLIENT_SECRET, PKJ_CLIENT, Servers, query_of


def _async_of(sender: Sender | None) -> AsyncSender:
    if sender is None:
        return threaded_urllib_sender()

    async def send(request: Any) -> Any:
        return await asyncio.to_thread(sender, request)

    return send


class AsyncDriven:
    """TokenClient's interface over :class:`AsyncTokenClient`: each call runs in an event loop.

    The module's tests run once with :class:`TokenClient` and once with this, so every
    token flow is checked on the async twin too (same requests, same answers, same errors).
    """

    def __init__(self, *, sender: Sender | None = None, **kw: Any) -> None:
        self._inner = AsyncTokenClient(sender=_async_of(sender), **kw)

    @classmethod
    def from_issuer(
        cls, issuer: str, *, key: DPoPKey, client_id: str, sender: Sender | None = None, **kw: Any
    ) -> AsyncDriven:
        made = cls.__new__(cls)
        made._inner = asyncio.run(
            AsyncTokenClient.from_issuer(
                issuer, key=key, client_id=client_id, sender=_async_of(sender), **kw
            )
        )
        return made

    def __repr__(self) -> str:
        return repr(self._inner)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if inspect.iscoroutinefunction(attr):
            method: Callable[..., Any] = attr

            def run(*args: Any, **kwargs: Any) -> Any:
                return asyncio.run(method(*args, **kwargs))

            return run
        return attr


@pytest.fixture(autouse=True, params=["sync", "async"])
def token_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with TokenClient and with AsyncTokenClient."""
    mode: str = request.param
    if mode == "async":
        monkeypatch.setattr(sys.modules[__name__], "TokenClient", AsyncDriven)
    return mode


def make_client(servers: Servers, key: DPoPKey, **kw: object) -> TokenClient:
    options: dict[str, object] = {"client_secret": CLIENT_SECRET, "allow_insecure_http": True}
    options.update(kw)
    return TokenClient.from_issuer(
        servers.state.issuer,
        key=key,
        client_id=str(options.pop("client_id", CLIENT_ID)),
        **options,  # type: ignore[arg-type]
    )


def authorize(servers: Servers, request: AuthorizationRequest) -> str:
    """Play the browser: follow the authorization URL to the redirect (auto-approving AS)."""
    response = httpx.get(request.url, follow_redirects=False)
    assert response.status_code == 302
    return response.headers["location"]


# -- discovery ------------------------------------------------------------------------------------


def test_x16_discovery_rfc8414(servers: Servers) -> None:
    meta = discover(servers.state.issuer)
    assert meta.issuer == servers.state.issuer
    assert meta.token_endpoint == servers.state.base + "/token"
    assert meta.pushed_authorization_request_endpoint == servers.state.base + "/par"


def test_x16_discovery_falls_back_to_oidc(servers: Servers) -> None:
    meta = discover(servers.state.base + "/oidc")
    assert meta.issuer == servers.state.base + "/oidc"


def test_x16_issuer_mismatch_refused(servers: Servers, key: DPoPKey) -> None:
    """X-16: the metadata issuer must equal the issuer asked for (mix-up protection)."""
    servers.state.metadata_issuer = "http://evil.example"
    with pytest.raises(ClientError) as info:
        make_client(servers, key)
    assert info.value.reason is Reason.CONFIGURATION


def test_discovery_nothing_found(servers: Servers) -> None:
    with pytest.raises(ClientError) as info:
        discover(servers.state.base + "/nowhere")
    assert info.value.reason is Reason.CONFIGURATION


def test_metadata_validation() -> None:
    with pytest.raises(ClientError):
        ServerMetadata.from_dict({"issuer": "https://as"})
    with pytest.raises(ClientError):
        ServerMetadata.from_dict(
            {
                "issuer": "https://as",
                "token_endpoint": "https://as/t",
                "dpop_signing_alg_values_supported": "ES256",
            }
        )


def test_c16_alg_not_supported_is_configuration_error(servers: Servers) -> None:
    """C-16: metadata ["ES256"] + an RSA key → error before anything is sent."""
    servers.state.algs = ["ES256"]
    rsa = DPoPKey.generate("PS256")
    with pytest.raises(ClientError) as info:
        make_client(servers, rsa)
    assert info.value.reason is Reason.CONFIGURATION
    assert servers.state.token_requests == []


def test_c16_eddsa_key_uses_rfc9864_name_when_listed(servers: Servers) -> None:
    servers.state.algs = ["Ed25519"]
    client = make_client(servers, DPoPKey.generate("EdDSA"))
    assert client.key.alg == "Ed25519"
    assert client.client_credentials().is_dpop


# -- client credentials, client authentication ----------------------------------------------------


def test_c1_c10_client_credentials_with_as_nonce(servers: Servers, key: DPoPKey) -> None:
    """C-1: the token request carries a proof for the token endpoint; AS nonce retry (C-10)."""
    client = make_client(servers, key)
    tokens = client.client_credentials(scope="read", resource="https://api.example")
    assert tokens.is_dpop
    assert tokens.key == key
    assert tokens.scope == "read"
    reqs = servers.state.token_requests
    assert len(reqs) == 2  # 400 use_dpop_nonce, then 200
    assert "nonce" not in reqs[0]["headers"].get("dpop", "")
    assert reqs[1]["jkt"] == key.jkt
    assert reqs[1]["proof_claims"]["htu"] == servers.state.base + "/token"
    assert reqs[1]["proof_claims"]["htm"] == "POST"
    assert "ath" not in reqs[1]["proof_claims"]
    assert reqs[1]["form"]["resource"] == "https://api.example"
    # C-11: the next token request uses the nonce at once.
    client.client_credentials()
    assert len(servers.state.token_requests) == 3


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_secret_methods(servers: Servers, key: DPoPKey, method: str) -> None:
    client = make_client(servers, key, auth_method=method)
    assert client.client_credentials().is_dpop
    last = servers.state.token_requests[-1]
    if method == "client_secret_basic":
        assert last["headers"]["authorization"].startswith("Basic ")
        assert "client_secret" not in last["form"]
    else:
        assert last["form"]["client_secret"] == CLIENT_SECRET
        assert "authorization" not in last["headers"]


def test_wrong_secret_is_invalid_client(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key, client_secret="wrong")
    with pytest.raises(InvalidClientError) as info:
        client.client_credentials()
    assert info.value.detail["status"] == 401


def test_private_key_jwt(servers: Servers, key: DPoPKey) -> None:
    """RFC 7523 assertion signed by our JWS layer, verified by joserfc at the test AS."""
    signing = DPoPKey.generate("ES256")
    servers.state.pkj_public_jwk = {**signing.public_jwk, "alg": "ES256"}
    client = make_client(
        servers, key, client_id=PKJ_CLIENT, client_secret=None, assertion_key=signing
    )
    assert client.auth_method == "private_key_jwt"
    assert client.client_credentials().is_dpop
    forms = [r["form"] for r in servers.state.token_requests]
    # The nonce retry carried a fresh assertion (assertions are single-use).
    assert forms[0]["client_assertion"] != forms[1]["client_assertion"]


def test_public_client_none(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key, client_id="public", client_secret=None)
    assert client.auth_method == "none"
    assert client.client_credentials().is_dpop
    assert servers.state.token_requests[-1]["form"]["client_id"] == "public"


def test_client_auth_misconfiguration(servers: Servers, key: DPoPKey) -> None:
    with pytest.raises(ValueError, match=r"."):
        make_client(servers, key, client_secret=None, auth_method="client_secret_post")
    with pytest.raises(ValueError, match=r"."):
        make_client(servers, key, client_secret=None, auth_method="private_key_jwt")


# -- token_type checks ----------------------------------------------------------------------------


def test_c7_sec115_bearer_downgrade_refused(servers: Servers, key: DPoPKey) -> None:
    """C-7 / SEC-115: token_type Bearer after a proof → TokenResponseError, tokens not kept."""
    servers.state.token_type = "Bearer"
    with pytest.raises(TokenResponseError) as info:
        make_client(servers, key).client_credentials()
    assert info.value.reason is Reason.TOKEN_RESPONSE


def test_c7_x12_token_type_case_insensitive(servers: Servers, key: DPoPKey) -> None:
    """C-7 / X-12: "dpop" is DPoP."""
    servers.state.token_type = "dpop"
    assert make_client(servers, key).client_credentials().is_dpop


def test_c7_bearer_allowed_only_explicitly(servers: Servers, key: DPoPKey) -> None:
    servers.state.token_type = "Bearer"
    tokens = make_client(servers, key, allow_bearer_downgrade=True).client_credentials()
    assert not tokens.is_dpop


# -- authorization code, PKCE, dpop_jkt, PAR ------------------------------------------------------


def test_c18_c20_c21_code_flow_with_par(servers: Servers, key: DPoPKey) -> None:
    """C-18/C-20/C-21: dpop_jkt in the PAR body, a proof on PAR (nonce retry there too)."""
    client = make_client(servers, key)
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb", scope="openid")
    assert set(query_of(request.url)) == {"client_id", "request_uri"}
    par = servers.state.par_requests
    assert len(par) == 2  # use_dpop_nonce at the PAR endpoint, then 201
    assert par[1]["form"]["dpop_jkt"] == key.jkt
    assert par[1]["jkt"] == key.jkt
    assert par[1]["form"]["code_challenge_method"] == "S256"
    tokens = client.exchange_code(request, authorize(servers, request))
    assert tokens.is_dpop
    assert tokens.refresh_token is not None
    assert tokens.scope == "openid"
    assert servers.state.token_requests[-1]["jkt"] == key.jkt


def test_c18_code_flow_without_par(servers: Servers, key: DPoPKey) -> None:
    servers.state.offer_par = False
    client = make_client(servers, key)
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb")
    query = query_of(request.url)
    assert query["dpop_jkt"] == key.jkt
    assert query["code_challenge_method"] == "S256"
    assert servers.state.par_requests == []
    assert client.exchange_code(request, authorize(servers, request)).is_dpop


def test_par_required_but_not_offered(servers: Servers, key: DPoPKey) -> None:
    servers.state.offer_par = False
    servers.state.require_par = True
    client = make_client(servers, key)
    with pytest.raises(ClientError) as info:
        client.authorization_request(redirect_uri="http://127.0.0.1/cb")
    assert info.value.reason is Reason.CONFIGURATION
    with pytest.raises(ClientError):
        client.authorization_request(redirect_uri="http://127.0.0.1/cb", use_par=False)


def test_c19_fresh_key_per_authorization(servers: Servers, key: DPoPKey) -> None:
    """C-19: a new DPoP key per authorization request when asked."""
    client = make_client(servers, key)
    first = client.authorization_request(redirect_uri="http://127.0.0.1/cb", fresh_key=True)
    second = client.authorization_request(redirect_uri="http://127.0.0.1/cb", fresh_key=True)
    assert len({first.key.jkt, second.key.jkt, key.jkt}) == 3
    tokens = client.exchange_code(second, authorize(servers, second))
    assert tokens.key == second.key
    assert servers.state.token_requests[-1]["jkt"] == second.key.jkt


def test_code_exchange_with_other_key_refused_by_as(servers: Servers, key: DPoPKey) -> None:
    """The AS enforces dpop_jkt: a request made for key A cannot be redeemed by key B."""
    client = make_client(servers, key)
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb")
    other = AuthorizationRequest(
        url=request.url,
        state=request.state,
        code_verifier=request.code_verifier,
        redirect_uri=request.redirect_uri,
        key=DPoPKey.generate(),
    )
    with pytest.raises(InvalidGrantError):
        client.exchange_code(other, authorize(servers, request))


@pytest.mark.parametrize("case", ["state", "iss", "error", "no-code", "two-states"])
def test_callback_checks(servers: Servers, key: DPoPKey, case: str) -> None:
    """The callback's state (CSRF), iss (RFC 9207 mix-up), error and code are checked."""
    servers.state.offer_par = False
    client = make_client(servers, key)
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb")
    callback = authorize(servers, request)
    bad = {
        "state": callback.replace("state=", "state=x"),
        "iss": callback.replace("iss=", "iss=x"),
        "error": f"http://127.0.0.1/cb?state={request.state}&error=access_denied",
        "no-code": callback.replace("code=", "nocode="),
        "two-states": callback + "&state=again",
    }[case]
    with pytest.raises(TokenResponseError) as info:
        client.exchange_code(request, bad)
    assert info.value.reason is (Reason.ISS_MISMATCH if case == "iss" else Reason.TOKEN_RESPONSE)
    assert servers.state.token_requests == []


def test_login_native_loopback(servers: Servers, key: DPoPKey) -> None:
    """RFC 8252 §7.3: one-shot loopback listener; the browser is injected."""
    opened: list[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        with httpx.Client(follow_redirects=True) as b:
            page = b.get(url)
        assert page.status_code == 200
        return True

    client = make_client(servers, key, client_id="public", client_secret=None)
    tokens = client.login_native(scope="profile", open_browser=browser, timeout=10)
    assert len(opened) == 1
    assert tokens.is_dpop
    assert tokens.key != key  # C-19: fresh key per authorization by default
    form = servers.state.token_requests[-1]["form"]
    assert form["redirect_uri"].startswith("http://127.0.0.1:")


def test_login_native_timeout(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key, client_id="public", client_secret=None)
    with pytest.raises(TimeoutError):
        client.login_native(open_browser=lambda url: None, timeout=0.2)


# -- refresh and revocation -----------------------------------------------------------------------


def code_tokens(servers: Servers, client: TokenClient) -> TokenSet:
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb", scope="s")
    return client.exchange_code(request, authorize(servers, request))


def test_c8_refresh_uses_the_same_key(servers: Servers, key: DPoPKey) -> None:
    """C-8: the refresh proof's jkt equals the original token-request proof's jkt."""
    client = make_client(servers, key)
    tokens = code_tokens(servers, client)
    original = servers.state.token_requests[-1]["jkt"]
    new = client.refresh(tokens)
    last = servers.state.token_requests[-1]
    assert last["form"]["grant_type"] == "refresh_token"
    assert last["jkt"] == original == key.jkt
    assert new.access_token != tokens.access_token
    assert new.key == key
    assert servers.state.refresh_count == 1


def test_c8_refresh_with_fresh_key_tokens_keeps_their_key(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key)
    request = client.authorization_request(redirect_uri="http://127.0.0.1/cb", fresh_key=True)
    tokens = client.exchange_code(request, authorize(servers, request))
    client.refresh(tokens)
    assert servers.state.token_requests[-1]["jkt"] == request.key.jkt != key.jkt


def test_sec96_stolen_refresh_token_with_other_key_fails(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key)
    tokens = code_tokens(servers, client)
    stolen = TokenSet(
        access_token="x",
        token_type="DPoP",
        key=DPoPKey.generate(),
        refresh_token=tokens.refresh_token,
    )
    with pytest.raises(InvalidGrantError):
        client.refresh(stolen)


def test_refresh_without_refresh_token_is_misuse(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key)
    with pytest.raises(ValueError, match=r"."):
        client.refresh(client.client_credentials())


def test_revocation(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key)
    tokens = code_tokens(servers, client)
    assert tokens.refresh_token is not None
    client.revoke(tokens.refresh_token, hint="refresh_token")
    assert servers.state.revoked == [tokens.refresh_token]
    with pytest.raises(InvalidGrantError):
        client.refresh(tokens)


def test_c22_every_token_request_carries_a_proof(servers: Servers, key: DPoPKey) -> None:
    """C-22 / C-1: every grant (client credentials, code, refresh) sends a DPoP proof."""
    client = make_client(servers, key)
    client.client_credentials()
    client.refresh(code_tokens(servers, client))
    grants = set()
    for record in servers.state.token_requests:
        proof = record["headers"]["dpop"]
        verify_proof(
            proof, htm="POST", htu=servers.state.base + "/token", now=claims_of(proof)["iat"]
        )
        grants.add(record["form"]["grant_type"])
    assert grants == {"client_credentials", "authorization_code", "refresh_token"}


def test_as_use_dpop_nonce_without_header_raises(servers: Servers, key: DPoPKey) -> None:
    meta = ServerMetadata(
        issuer=servers.state.issuer, token_endpoint=servers.state.base + "/as-loop/no-nonce"
    )
    client = TokenClient(key=key, client_id="public", metadata=meta, allow_insecure_http=True)
    with pytest.raises(MissingNonceError):
        client.client_credentials()


def test_httpx_sender_and_shared_nonces(servers: Servers, key: DPoPKey) -> None:
    nonces = NonceCache()
    with httpx.Client() as http:
        client = make_client(servers, key, sender=httpx_sender(http), nonces=nonces)
        assert client.client_credentials().is_dpop
    assert nonces.get(servers.state.base) is not None


def test_pkce_pair_rfc7636() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == expected.decode()


def test_c23_reprs_hold_no_secrets(servers: Servers, key: DPoPKey) -> None:
    client = make_client(servers, key)
    tokens = code_tokens(servers, client)
    text = repr(tokens) + repr(client) + repr(key)
    assert tokens.access_token not in text
    assert tokens.refresh_token is not None
    assert tokens.refresh_token not in text
    assert CLIENT_SECRET not in text
    assert key.private_jwk()["d"] not in text


def test_c22_register_client_needs_endpoint(servers: Servers, key: DPoPKey) -> None:
    meta = discover(servers.state.issuer)
    with pytest.raises(ClientError) as info:
        register_client(meta, {"redirect_uris": ["https://app.example/cb"]})
    assert info.value.reason is Reason.CONFIGURATION


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"token_type": "DPoP"}',
        b'{"access_token": "", "token_type": "DPoP"}',
        b'{"access_token": "a"}',
        b'{"access_token": "a", "token_type": "DPoP", "expires_in": "300"}',
        b'{"access_token": "a", "token_type": "DPoP", "expires_in": true}',
        b'{"access_token": "a", "token_type": "DPoP", "expires_in": -1}',
        b'{"access_token": "a", "token_type": "DPoP", "refresh_token": 5}',
    ],
)
def test_malformed_token_responses_refused(servers: Servers, key: DPoPKey, body: bytes) -> None:
    servers.state.token_body_override = body
    with pytest.raises(TokenResponseError) as info:
        make_client(servers, key).client_credentials()
    assert info.value.reason is Reason.TOKEN_RESPONSE


def test_token_response_optional_members(servers: Servers, key: DPoPKey) -> None:
    servers.state.token_body_override = b'{"access_token": "a.b", "token_type": "DpOp"}'
    tokens = make_client(servers, key).client_credentials()
    assert tokens.is_dpop
    assert tokens.expires_at is None
    assert not tokens.expired(now=1e12)
    assert tokens.refresh_token is None


def test_unknown_error_code_is_token_response_error(servers: Servers, key: DPoPKey) -> None:
    meta = ServerMetadata(
        issuer=servers.state.issuer, token_endpoint=servers.state.base + "/nowhere"
    )
    client = TokenClient(key=key, client_id="public", metadata=meta, allow_insecure_http=True)
    with pytest.raises(TokenResponseError) as info:
        client.client_credentials()
    assert info.value.detail["status"] in (404, 405)


def test_revocation_without_endpoint(servers: Servers, key: DPoPKey) -> None:
    meta = ServerMetadata(issuer=servers.state.issuer, token_endpoint=servers.state.base + "/token")
    client = TokenClient(key=key, client_id="public", metadata=meta, allow_insecure_http=True)
    with pytest.raises(ClientError) as info:
        client.revoke("t")
    assert info.value.reason is Reason.CONFIGURATION
    with pytest.raises(ClientError):
        client.authorization_request(redirect_uri="http://127.0.0.1/cb")


def test_requests_sender(servers: Servers, key: DPoPKey) -> None:
    import requests

    from dpopkit.client.requests import requests_sender

    with requests.Session() as session:
        client = make_client(servers, key, sender=requests_sender(session))
        assert client.client_credentials().is_dpop


# -- the async twin ------------------------------------------------------------------------------


def test_c1_async_token_requests_leave_the_loop_free(servers: Servers, key: DPoPKey) -> None:
    """C-1: AsyncTokenClient's default sender runs in a worker: other tasks run meanwhile."""
    inner = threaded_urllib_sender()
    state = {"in_flight": False, "ticks": 0, "running": True}

    async def sender(request: Any) -> Any:
        state["in_flight"] = True
        try:
            return await inner(request)
        finally:
            state["in_flight"] = False

    async def ticker() -> None:
        while state["running"]:
            if state["in_flight"]:
                state["ticks"] += 1
            await asyncio.sleep(0)

    async def main() -> TokenSet:
        tick = asyncio.create_task(ticker())
        client = await AsyncTokenClient.from_issuer(
            servers.state.issuer,
            key=key,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            sender=sender,
            allow_insecure_http=True,
        )
        tokens = await client.client_credentials()
        state["running"] = False
        await tick
        return tokens

    tokens = asyncio.run(main())
    assert tokens.token_type.lower() == "dpop"
    assert state["ticks"] > 0


@pytest.mark.parametrize("package", ["httpx", "httpx2"])
def test_c1_async_sender_of_each_http_package(servers: Servers, key: DPoPKey, package: str) -> None:
    """C-1: httpx_async_sender and httpx2_async_sender carry the proof and the AS nonce."""
    import importlib

    adapter = importlib.import_module(f"dpopkit.client.{package}")
    module = importlib.import_module(package)

    async def main() -> TokenSet:
        async with module.AsyncClient() as http:
            send = getattr(adapter, f"{package}_async_sender")(http)
            client = await AsyncTokenClient.from_issuer(
                servers.state.issuer,
                key=key,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                sender=send,
                allow_insecure_http=True,
            )
            return await client.client_credentials()

    assert asyncio.run(main()).token_type.lower() == "dpop"
    assert len(servers.state.token_requests) == 2  # 400 use_dpop_nonce, then 200 (C-10)
