"""End to end: our client against our authorization server and our resource server.

One uvicorn server on 127.0.0.1 hosts the dpopkit AS (``dpopkit.server.app``,
SQLite store, nonces always required, test-mode login) with a protected API
mounted at ``/api/whoami`` behind ``dpopkit.resource.asgi.DPoPMiddleware``
(JWT access tokens from the AS's JWKS, RS nonces required).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import requests
import uvicorn
from starlette.types import Receive, Scope, Send

from dpopkit import DPoPKey, InvalidGrantError, NonceIssuer, ProofPolicy
from dpopkit.cli import main
from dpopkit.client import httpx as dpop_httpx
from dpopkit.client import requests as dpop_requests
from dpopkit.client.tokens import RefreshingToken, TokenClient, TokenSet, register_client
from dpopkit.keyfile import save_key
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard
from dpopkit.resource.tokens import AsyncJWTAccessTokens
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.service import ServerSettings, TokenService
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret

from .helpers import claims_of
from .servers import _free_socket

SECRET = "client-secret-for-e2e"
REDIRECT = "https://client.example/cb"


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    principal = scope.get("dpop")
    body = json.dumps({"jkt": getattr(principal, "jkt", None)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Ours:
    def __init__(self, issuer: str, db: str) -> None:
        self.issuer = issuer
        self.store = SQLGrantStore(db)
        settings = ServerSettings(
            issuer=issuer,
            nonce_policy="always",
            test_mode_user="alice",
            access_token_lifetime=300,
            registration_enabled=True,
            registration_allowed_grant_types=("client_credentials",),
        )
        self.service = TokenService(
            settings,
            store=self.store,
            replay=MemoryReplayCache(),
            nonces=NonceIssuer([secrets.token_bytes(32)], context="as"),
        )
        self.store.put_client(
            ClientRecord(
                client_id="conf",
                secret_hash=hash_secret(SECRET),
                token_endpoint_auth_method="client_secret_basic",
                grant_types=("client_credentials", "authorization_code", "refresh_token"),
                redirect_uris=(REDIRECT,),
                scope="read write",
            )
        )
        self.store.put_client(
            ClientRecord(
                client_id="public",
                token_endpoint_auth_method="none",
                grant_types=("authorization_code", "refresh_token"),
                redirect_uris=(REDIRECT,),
                scope="read",
            )
        )
        guard = AsyncResourceGuard(
            tokens=AsyncJWTAccessTokens(
                issuer=issuer, audience=issuer, jwks_uri=issuer + "/jwks", allow_insecure_http=True
            ),
            replay=AsyncMemoryReplayCache(),
            policy=ProofPolicy(require_nonce=True),
            nonces=NonceIssuer([secrets.token_bytes(32)], context="rs"),
        )
        api = DPoPMiddleware(whoami, guard=guard, public_origin=issuer)
        self.app = create_app(
            self.service,
            authenticator=ConfigUsers({"alice": hash_secret("pw")}),
            mounts=[("/api/whoami", api)],
        )


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ours]:
    sock = _free_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    db = tmp_path_factory.mktemp("e2e") / "grants.db"
    servers = Ours(issuer, f"sqlite:///{db}")
    server = uvicorn.Server(
        uvicorn.Config(servers.app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield servers
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        servers.store.close()


def client_for(ours: Ours, key: DPoPKey) -> TokenClient:
    return TokenClient.from_issuer(
        ours.issuer, key=key, client_id="conf", client_secret=SECRET, allow_insecure_http=True
    )


def code_flow(ours: Ours, client: TokenClient, **kw: Any) -> TokenSet:
    request = client.authorization_request(redirect_uri=REDIRECT, scope="read", **kw)
    response = httpx.get(request.url)
    assert response.status_code in (302, 303)
    return client.exchange_code(request, response.headers["location"])


def test_e2e_client_credentials_then_api_sync(ours: Ours) -> None:
    """C-1, C-4, C-9, C-10, C-11 against our AS and RS: nonce round trips at both."""
    key = DPoPKey.generate()
    tokens = client_for(ours, key).client_credentials(scope="read")
    assert tokens.is_dpop
    assert claims_of(tokens.access_token)["cnf"]["jkt"] == key.jkt
    auth = dpop_httpx.DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True)
    with httpx.Client(auth=auth) as http:
        first = http.get(ours.issuer + "/api/whoami")
        assert first.status_code == 200
        assert first.json() == {"jkt": key.jkt}
        assert [r.status_code for r in first.history] == [401]  # RS use_dpop_nonce
        second = http.get(ours.issuer + "/api/whoami")
        assert second.status_code == 200
        assert second.history == []


def test_e2e_stolen_token_with_other_key_refused(ours: Ours) -> None:
    key = DPoPKey.generate()
    tokens = client_for(ours, key).client_credentials()
    thief = dpop_httpx.DPoPAuth(
        DPoPKey.generate(), token=tokens.access_token, allow_insecure_http=True
    )
    with httpx.Client(auth=thief) as http:
        response = http.get(ours.issuer + "/api/whoami")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_e2e_public_client_code_flow_par_refresh(ours: Ours) -> None:
    """C-8, C-18, C-20, C-21 against our AS: PAR with dpop_jkt, code, refresh with the same
    key; a public client's refresh token is bound, so a thief's key fails (SEC-95)."""
    key = DPoPKey.generate()
    client = TokenClient.from_issuer(
        ours.issuer, key=key, client_id="public", allow_insecure_http=True
    )
    assert client.metadata.pushed_authorization_request_endpoint == ours.issuer + "/par"
    tokens = code_flow(ours, client, fresh_key=True)
    assert tokens.key != key
    assert tokens.refresh_token is not None
    refreshed = client.refresh(tokens)
    assert refreshed.key == tokens.key
    stolen = TokenSet(
        access_token="x",
        token_type="DPoP",
        key=DPoPKey.generate(),
        refresh_token=refreshed.refresh_token,
    )
    with pytest.raises(InvalidGrantError):
        client.refresh(stolen)
    auth = dpop_requests.DPoPAuth(
        tokens.key, token=refreshed.access_token, allow_insecure_http=True
    )
    response = requests.get(ours.issuer + "/api/whoami", auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"jkt": tokens.key.jkt}


@pytest.mark.anyio
async def test_e2e_async_auto_refresh_20_tasks(ours: Ours) -> None:
    key = DPoPKey.generate()
    client = client_for(ours, key)
    tokens = await anyio.to_thread.run_sync(code_flow, ours, client)
    # The client's bookkeeping says the token has expired: one refresh for all 20 tasks.
    source = RefreshingToken(client, dataclasses.replace(tokens, expires_at=time.time() - 1))
    auth = dpop_httpx.DPoPAuth(key, token=source, allow_insecure_http=True)
    codes: list[int] = []
    async with httpx.AsyncClient(auth=auth, timeout=30) as http:

        async def one() -> None:
            codes.append((await http.get(ours.issuer + "/api/whoami")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert codes == [200] * 20
    assert source.refresh_count == 1
    assert source.tokens.access_token != tokens.access_token


def test_e2e_cli_token_and_request(
    ours: Ours, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = DPoPKey.generate()
    keyfile = save_key(key, tmp_path / "k.jwk")
    argv = ["token", "--issuer", ours.issuer, "--client-id", "conf", "--client-secret", SECRET]
    assert main([*argv, "--key", str(keyfile), "--allow-insecure-http"]) == 0
    token = json.loads(capsys.readouterr().out)["access_token"]
    argv = ["request", ours.issuer + "/api/whoami", "--key", str(keyfile), "--token", token]
    assert main([*argv, "--verbose", "--allow-insecure-http"]) == 0
    out = capsys.readouterr().out
    assert "HTTP 200 OK" in out
    assert json.loads(out.splitlines()[-1]) == {"jkt": key.jkt}
    proofs = [line for line in out.splitlines() if line.startswith("* proof")]
    assert len(proofs) == 2  # RS use_dpop_nonce, then 200
    assert "nonce" in json.loads(proofs[1].split(": ", 1)[1])


def test_c22_registered_dpop_client_always_sends_proofs(ours: Ours) -> None:
    """C-22: a client registered with dpop_bound_access_tokens=true (RFC 9449 §5.2) gets
    DPoP-bound tokens, and our AS refuses its token requests without a proof."""
    key = DPoPKey.generate()
    meta = client_for(ours, key).metadata
    registered = register_client(
        meta,
        {
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
        },
    )
    assert registered["dpop_bound_access_tokens"] is True
    client = TokenClient(
        key=key,
        client_id=registered["client_id"],
        client_secret=registered["client_secret"],
        metadata=meta,
        allow_insecure_http=True,
    )
    assert client.client_credentials().is_dpop
    # Without a proof (a plain form POST) the AS refuses this client.
    response = httpx.post(
        meta.token_endpoint,
        data={"grant_type": "client_credentials"},
        auth=(registered["client_id"], registered["client_secret"]),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_dpop_proof"
