"""``dpopkit serve`` mounts the demo protected API: a token from this AS works at /api/whoami."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpopkit import DPoPKey, create_proof
from dpopkit.cli.serve import whoami_mounts
from dpopkit.server.config import build_server, load_config
from tests.live import serve_in_thread

CONFIG = """
issuer = "{issuer}"
replay_url = "memory"

[[clients]]
client_id = "svc"
client_secret = "svc-secret-value"
grant_types = ["client_credentials"]
scope = "read"
"""


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[str]:
    def build(base: str) -> Any:
        path = tmp_path / "as.toml"
        path.write_text(CONFIG.format(issuer=base))
        config = load_config(path, data_dir=tmp_path)
        app, service = build_server(config, mounts=lambda svc: whoami_mounts(svc, base))
        services.append(service)
        return app

    services: list[Any] = []
    with serve_in_thread(build) as base:
        yield base
    for service in services:
        service.close()


def _token(issuer: str, key: DPoPKey | None) -> dict[str, Any]:
    headers = {}
    if key is not None:
        headers["DPoP"] = create_proof(
            key, htm="POST", htu=issuer + "/token", allow_insecure_http=True
        )
    resp = httpx.post(
        issuer + "/token",
        data={"grant_type": "client_credentials"},
        headers=headers,
        auth=("svc", "svc-secret-value"),
    )
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def test_whoami_accepts_this_as_dpop_token(issuer: str) -> None:
    """AS-2 end to end: the bound token works at the mounted RS with a proof by the same key."""
    key = DPoPKey.generate("ES256")
    token = _token(issuer, key)["access_token"]
    url = issuer + "/api/whoami"
    proof = create_proof(key, htm="GET", htu=url, access_token=token, allow_insecure_http=True)
    resp = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status_code == 200, resp.text
    assert "svc" in resp.text


def test_whoami_rejects_bound_token_as_bearer_and_other_key(issuer: str) -> None:
    """RS-side downgrade and key binding with this AS's tokens (SEC-05, SEC-61)."""
    key = DPoPKey.generate("ES256")
    token = _token(issuer, key)["access_token"]
    url = issuer + "/api/whoami"
    bearer = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401
    other = DPoPKey.generate("ES256")
    proof = create_proof(other, htm="GET", htu=url, access_token=token, allow_insecure_http=True)
    resp = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status_code == 401


def test_whoami_rejects_revoked_token(issuer: str) -> None:
    """A token revoked at the AS is refused by the mounted API (it asks the AS's store)."""
    key = DPoPKey.generate("ES256")
    token = _token(issuer, key)["access_token"]
    httpx.post(issuer + "/revoke", data={"token": token}, auth=("svc", "svc-secret-value"))
    url = issuer + "/api/whoami"
    proof = create_proof(key, htm="GET", htu=url, access_token=token, allow_insecure_http=True)
    resp = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert resp.status_code == 401


def test_dpopkit_client_gets_token_and_calls_api(issuer: str) -> None:
    """dpopkit's own client (the docs' Python example): token, then the protected API."""
    from dpopkit.client.httpx import DPoPAuth
    from dpopkit.client.tokens import TokenClient

    key = DPoPKey.generate("ES256")
    client = TokenClient.from_issuer(
        issuer,
        key=key,
        client_id="svc",
        client_secret="svc-secret-value",
        allow_insecure_http=True,
    )
    tokens = client.client_credentials(scope="read")
    assert tokens.token_type == "DPoP"
    auth = DPoPAuth(key, token=tokens.access_token, allow_insecure_http=True)
    with httpx.Client(auth=auth) as http:
        resp = http.get(issuer + "/api/whoami")
    assert resp.status_code == 200
    assert resp.json()["jkt"] == key.jkt
