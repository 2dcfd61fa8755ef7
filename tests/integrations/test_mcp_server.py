"""DPoP for MCP servers on the official SDK, end to end over real sockets.

``dpopkit serve`` issues the tokens, ``examples/mcp/server.py`` serves the MCP
endpoint, and the SDK's Streamable HTTP client calls its tools with a proof on
every request. The negatives send one request each and assert the status and
the wire ``error`` (RFC 9449 §7.1, RFC 6750 §3.1).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("mcp", reason="needs dpopkit[mcp]")

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy, create_proof
from dpopkit.core.challenge import parse_challenges
from dpopkit.integrations.mcp.server import (
    STATELESS_IAT_WINDOW,
    MCPResourceAuth,
    stateless_proof_policy,
)
from dpopkit.resource import AsyncResourceGuard
from dpopkit.resource.jwt_tokens import AsyncJWTAccessTokens
from dpopkit.storage.memory import AsyncMemoryReplayCache

from ._mcp_support import (
    EXAMPLE_SERVER,
    ProofAuth,
    agent_token,
    authorization_server,
    call_tools,
    free_port,
    process,
    serve_with_lifespan,
)

sys.path.insert(0, str(EXAMPLE_SERVER.parent))
from server import build_server  # noqa: E402


@dataclass
class Stack:
    issuer: str
    mcp: str
    other: str
    metadata_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Our AS and the example MCP server as two processes."""
    port = free_port()
    mcp = f"http://127.0.0.1:{port}/mcp"
    other = f"http://127.0.0.1:{port}/other-mcp"
    with authorization_server(tmp_path_factory.mktemp("mcp-as"), mcp=mcp, other=other) as iss:
        argv = [sys.executable, str(EXAMPLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--issuer", iss, "--allow-insecure-http"]
        metadata_url = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
        with process(argv, metadata_url):
            yield Stack(issuer=iss, mcp=mcp, other=other, metadata_url=metadata_url)


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def _post(url: str, *, authorization: str | None, proof: str | None) -> httpx.Response:
    headers = dict(MCP_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    if proof is not None:
        headers["DPoP"] = proof
    return httpx.post(url, json=INIT, headers=headers, timeout=10)


def _challenge(response: httpx.Response) -> dict[str, str]:
    (dpop,) = [c for c in parse_challenges(response.headers["WWW-Authenticate"]) if c.is_scheme("DPoP")]
    return dict(dpop.params)


def _proof(key: DPoPKey, url: str, token: str, *, htm: str = "POST") -> str:
    return create_proof(key, htm=htm, htu=url, access_token=token, allow_insecure_http=True)


# -- the whole stack ------------------------------------------------------------------------


def test_mcp_client_calls_a_tool_and_the_tool_sees_the_principal(stack: Stack) -> None:
    """HD-31: our AS, the example server and the SDK's client; the tool sees sub, client, scopes, jkt (RFC 9449 §6)."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key)
    auth = ProofAuth(key, token)
    tools, who = anyio.run(call_tools, stack.mcp, auth)
    assert "whoami" in tools
    assert "add" in tools
    assert who["authenticated"] is True
    assert who["client_id"] == "mcp-agent"
    assert who["scopes"] == ["mcp:tools"]
    assert who["jkt"] == key.jkt
    assert who["cnf_jkt"] == key.jkt
    assert set(auth.statuses) <= {200, 202}


def test_mcp_challenge_points_at_the_resource_metadata(stack: Stack) -> None:
    """HD-31: a request without a token gets a DPoP challenge with algs and resource_metadata (RFC 9728 §5.1)."""
    response = _post(stack.mcp, authorization=None, proof=None)
    assert response.status_code == 401
    params = _challenge(response)
    assert "error" not in params
    assert "ES256" in params["algs"].split()
    assert params["resource_metadata"] == stack.metadata_url
    doc = httpx.get(stack.metadata_url).json()
    assert doc["resource"] == stack.mcp
    assert doc["authorization_servers"] == [stack.issuer]
    assert doc["dpop_bound_access_tokens_required"] is True
    assert "ES256" in doc["dpop_signing_alg_values_supported"]


def test_mcp_stolen_token_without_the_key_is_refused(stack: Stack) -> None:
    """HD-31: a token used with a proof from another key is invalid_token (RFC 9449 §4.3 (12), §6)."""
    token = agent_token(stack.issuer, DPoPKey.generate())
    thief = DPoPKey.generate()
    response = _post(stack.mcp, authorization=f"DPoP {token}", proof=_proof(thief, stack.mcp, token))
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"


def test_mcp_replayed_proof_is_refused(stack: Stack) -> None:
    """HD-31: the second use of a proof is invalid_dpop_proof (RFC 9449 §11.1)."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key)
    proof = _proof(key, stack.mcp, token)
    first = _post(stack.mcp, authorization=f"DPoP {token}", proof=proof)
    assert first.status_code == 200
    second = _post(stack.mcp, authorization=f"DPoP {token}", proof=proof)
    assert second.status_code == 401
    assert _challenge(second)["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize("with_proof", [False, True])
def test_mcp_bearer_downgrade_is_refused(stack: Stack, with_proof: bool) -> None:
    """HD-31: a DPoP-bound token sent as Bearer is refused (RFC 9449 §7.2)."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key)
    proof = _proof(key, stack.mcp, token) if with_proof else None
    response = _post(stack.mcp, authorization=f"Bearer {token}", proof=proof)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("htm", "target"),
    [
        ("POST", "{origin}/other-mcp"),
        ("GET", "{origin}/mcp"),
        ("POST", "http://localhost:{port}/mcp"),
        ("POST", "https://127.0.0.1:{port}/mcp"),
    ],
)
def test_mcp_proof_for_another_request_is_refused(stack: Stack, htm: str, target: str) -> None:
    """HD-31: a proof for another URL or method is invalid_dpop_proof (RFC 9449 §4.3 (8), (9))."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key)
    origin = stack.mcp.removesuffix("/mcp")
    url = target.format(origin=origin, port=origin.rsplit(":", 1)[1])
    proof = _proof(key, url, token, htm=htm)
    response = _post(stack.mcp, authorization=f"DPoP {token}", proof=proof)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_dpop_proof"


def test_mcp_token_for_another_resource_is_refused(stack: Stack) -> None:
    """HD-31: a token whose aud is another resource is invalid_token (RFC 8707 §2, RFC 9068 §4)."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=stack.other)
    response = _post(stack.mcp, authorization=f"DPoP {token}", proof=_proof(key, stack.mcp, token))
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"
    # the same AS, the right resource: accepted (the refusal above is the audience)
    good = agent_token(stack.issuer, key, resource=stack.mcp)
    response = _post(stack.mcp, authorization=f"DPoP {good}", proof=_proof(key, stack.mcp, good))
    assert response.status_code == 200
