"""Nonce secret rotation across two ``dpopkit serve`` authorization-server instances.

Each instance is built exactly as ``dpopkit serve`` builds it (``dpopkit.cli.serve``),
from a TOML file with ``[dpop] nonce_secrets`` or from ``--nonce-secret-env``; the
instances share one grant store, as instances behind a load balancer do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey
from dpopkit.cli.serve import _build
from dpopkit.client.flow import NonceCache
from dpopkit.client.httpx import DPoPAuth
from dpopkit.core.jws import b64url_encode

ISSUER = "https://as.example"
NEW = b64url_encode(b"new-as-nonce-secret-" + bytes(12))
OLD = b64url_encode(b"old-as-nonce-secret-" + bytes(12))
CLIENT_SECRET = "rotation-client-secret"


def _config(tmp: Path, name: str, secrets_line: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'issuer = "{ISSUER}"\n'
        f'data_dir = "{tmp / "data"}"\n'
        'replay_url = "sqlite"\n'
        "[dpop]\n"
        'nonce = "always"\n'
        f"{secrets_line}"
        "[[clients]]\n"
        'client_id = "svc"\n'
        f'client_secret = "{CLIENT_SECRET}"\n'
        'token_endpoint_auth_method = "client_secret_post"\n'
        'grant_types = ["client_credentials"]\n'
        'scope = "read"\n'
        "dpop_bound_access_tokens = true\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_hd21_as_rollout_across_two_instances_needs_no_client_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HD-21: two AS instances under a rolling nonce-secret change (add the new secret as a
    verifier everywhere, make it the signer, drop the old one): a client's nonce from one
    instance is accepted by the other at every stage, so the token endpoint never answers
    use_dpop_nonce after the first nonce (RFC 9449 §8)."""
    monkeypatch.setenv("AS_NEW", NEW)
    monkeypatch.setenv("AS_OLD", OLD)
    sources: dict[str, tuple[str, list[str] | None]] = {
        "old": (f'nonce_secrets = ["{OLD}"]\n', None),
        "old+new": (f'nonce_secrets = ["{OLD}", "{NEW}"]\n', None),
        "new+old": ("", ["AS_NEW", "AS_OLD"]),  # the repeatable flag
        "new": (f'nonce_secrets = ["{NEW}"]\n', None),
    }
    apps: dict[str, Any] = {}
    for name, (line, env) in sources.items():
        spec = {
            "config": str(_config(tmp_path, name.replace("+", "-"), line)),
            "host": None,
            "port": None,
            "data_dir": None,
            "no_api": True,
            "nonce_secret_env": env,
        }
        apps[name] = _build(spec)[1]
    statuses: list[int] = []
    cache = NonceCache()
    key = DPoPKey.generate("ES256")

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async def token_from(name: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=apps[name])
        hooks = {"response": [record]}
        async with httpx.AsyncClient(
            transport=transport, base_url=ISSUER, event_hooks=hooks
        ) as client:
            return await client.post(
                "/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "svc",
                    "client_secret": CLIENT_SECRET,
                },
                auth=DPoPAuth(key, nonces=cache),
            )

    async def main() -> None:
        assert (await token_from("old")).status_code == 200
        assert statuses == [400, 200]  # the first nonce: one use_dpop_nonce
        stages = [
            ("old+new", "old"),  # 1. add the new secret as a verifier, instance by instance
            ("old+new", "old+new"),
            ("new+old", "old+new"),  # 2. make it the signer, instance by instance
            ("new+old", "new+old"),
            ("new", "new+old"),  # 3. drop the old one (after the nonce lifetime)
            ("new", "new"),
        ]
        for a, b in stages:
            statuses.clear()
            for name in (a, b, a, b):
                response = await token_from(name)
                assert response.status_code == 200, (a, b, response.text)
                assert response.json()["token_type"] == "DPoP"
            assert statuses == [200] * 4, (a, b, statuses)

    anyio.run(main)
