"""Nonce secret rotation across two ``dpopkit serve-api`` instances, without client retries.

Real processes behind a small load balancer of the test's own (an httpx transport
that sends each request to the instance the test picks, keeping the public URL the
client signed). Each instance gets its secrets from ``--nonce-secret-env``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from dpopkit import DPoPKey, NonceIssuer
from dpopkit.client.httpx import DPoPAuth
from dpopkit.core.jws import b64url_encode
from tests.resource._rs_support import KeyServer, http_server
from tests.resource.test_serve_api import headers_for, serve_api

PUBLIC = "https://api.example"
NEW = b64url_encode(b"new-rs-nonce-secret-" + bytes(12))
OLD = b64url_encode(b"old-rs-nonce-secret-" + bytes(12))


class Balancer(httpx.BaseTransport):
    """Forwards every request to ``self.target`` (a base URL) and records the statuses."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.target = ""
        self.log: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        base = httpx.URL(self.target)
        request.url = request.url.copy_with(scheme=base.scheme, host=base.host, port=base.port)
        response = self.inner.handle_request(request)
        response.read()
        self.log.append((self.target, response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    with http_server(server.routes) as base:
        server.publish_metadata(base)
        yield server


@pytest.mark.slow
def test_hd21_rollout_across_two_instances_needs_no_client_retry(key_server: KeyServer) -> None:
    """HD-21: rolling a new nonce secret over two instances -- add it as a verifier
    everywhere, then make it the signer, then drop the old one -- never makes the client
    retry: at every stage, the nonce one instance gave is accepted by the other
    (RFC 9449 §9), and a still-accepted older nonce brings a fresh DPoP-Nonce."""
    common = (
        "--issuer",
        key_server.base,
        "--public-origin",
        PUBLIC,
        "--allow-insecure-http",
        "--require-nonce",
    )
    env = {"RS_OLD": OLD, "RS_NEW": NEW, "RS_NEW_OLD": f"{NEW},{OLD}"}
    configs = {
        "old": ("--nonce-secret-env", "RS_OLD"),
        "old+new": ("--nonce-secret-env", "RS_OLD", "--nonce-secret-env", "RS_NEW"),
        "new+old": ("--nonce-secret-env", "RS_NEW_OLD"),
        "new": ("--nonce-secret-env", "RS_NEW"),
    }
    # One process per configuration; two instances with the same secrets behave alike
    # (nonces are stateless), so a stage names the configuration of instance A and B.
    stages = [
        ("old", "old"),
        ("old+new", "old"),  # 1. add the new secret as a verifier, instance by instance
        ("old+new", "old+new"),
        ("new+old", "old+new"),  # 2. make it the signer, instance by instance
        ("new+old", "new+old"),
        ("new", "new+old"),  # 3. drop the old one (after the nonce lifetime)
        ("new", "new"),
    ]
    key = DPoPKey.generate("ES256")
    token = key_server.issuer().token(jkt=key.jkt, now=time.time(), aud=PUBLIC, lifetime=600)
    balancer = Balancer()
    with ExitStack() as stack:
        bases = {
            name: stack.enter_context(serve_api(*common, *flags, env_extra=env))
            for name, flags in configs.items()
        }
        client = stack.enter_context(
            httpx.Client(transport=balancer, auth=DPoPAuth(key, token=token), timeout=10)
        )
        balancer.target = bases["old"]
        assert client.get(f"{PUBLIC}/api/whoami").status_code == 200
        assert [status for _, status in balancer.log] == [401, 200]  # the first nonce
        for a, b in stages:
            balancer.log.clear()
            for name in (a, b, a, b):
                balancer.target = bases[name]
                assert client.get(f"{PUBLIC}/api/whoami").status_code == 200
            assert [status for _, status in balancer.log] == [200] * 4, (a, b, balancer.log)

        # The instance's nonces are those of the first secret it was given.
        rs_context = f"rs:{PUBLIC}"
        for name, signer in (("old+new", OLD), ("new+old", NEW)):
            balancer.target = bases[name]
            nonce = client.get(f"{PUBLIC}/api/whoami").headers.get("dpop-nonce")
            assert nonce is not None  # the client's nonce was the other secret's
            assert NonceIssuer([signer], context=rs_context).verify(nonce, now=time.time()).current
        # Why stage 3 waits for the nonce lifetime: a nonce of the old secret, still held
        # by a client, is refused once the old secret is gone (one use_dpop_nonce).
        stale = NonceIssuer([OLD], context=rs_context).issue(now=time.time())
        refused = httpx.get(
            f"{bases['new']}/api/whoami",
            headers=headers_for(key, token, f"{PUBLIC}/api/whoami", nonce=stale),
            timeout=10,
        )
        assert refused.status_code == 401
        assert refused.headers["dpop-nonce"] != stale
