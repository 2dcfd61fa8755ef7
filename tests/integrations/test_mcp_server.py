"""DPoP for MCP servers on the official SDK, end to end over real sockets.

``dpopkit serve`` issues the tokens, ``examples/mcp/server.py`` serves the MCP
endpoint, and the SDK's Streamable HTTP client calls its tools with a proof on
every request. The negatives send one request each and assert the status and
the wire ``error`` (RFC 9449 §7.1, RFC 6750 §3.1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, NonceIssuer, ProofPolicy, create_proof
from dpopkit.core.challenge import parse_challenges
from dpopkit.errors import SecurityWarning
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
    PROXIED,
    ProofAuth,
    Stack,
    agent_token,
    call_tools,
    example_server,
    free_port,
    process,
    serve_with_lifespan,
    unbound_token,
)

build_server = example_server().build_server

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
    (dpop,) = [
        c for c in parse_challenges(response.headers["WWW-Authenticate"]) if c.is_scheme("DPoP")
    ]
    return dict(dpop.params)


def _proof(key: DPoPKey, url: str, token: str, *, htm: str = "POST") -> str:
    return create_proof(key, htm=htm, htu=url, access_token=token, allow_insecure_http=True)


# -- the whole stack ------------------------------------------------------------------------


def test_mcp_client_calls_a_tool_and_the_tool_sees_the_principal(stack: Stack) -> None:
    """HD-32: our AS, the example server, the SDK client; tools see the principal (RFC 9449 §6)."""
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
    """HD-32: no token: a DPoP challenge with algs and resource_metadata (RFC 9728 §5.1)."""
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
    """HD-32: a token with a proof from another key is invalid_token (RFC 9449 §6)."""
    token = agent_token(stack.issuer, DPoPKey.generate())
    thief = DPoPKey.generate()
    response = _post(
        stack.mcp, authorization=f"DPoP {token}", proof=_proof(thief, stack.mcp, token)
    )
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"


def test_mcp_replayed_proof_is_refused(stack: Stack) -> None:
    """HD-32: the second use of a proof is invalid_dpop_proof (RFC 9449 §11.1)."""
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
    """HD-32: a DPoP-bound token sent as Bearer is refused (RFC 9449 §7.2)."""
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
    """HD-32: a proof for another URL or method is invalid_dpop_proof (RFC 9449 §4.3 (8), (9))."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key)
    origin = stack.mcp.removesuffix("/mcp")
    url = target.format(origin=origin, port=origin.rsplit(":", 1)[1])
    proof = _proof(key, url, token, htm=htm)
    response = _post(stack.mcp, authorization=f"DPoP {token}", proof=proof)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_dpop_proof"


def test_mcp_token_for_another_resource_is_refused(stack: Stack) -> None:
    """HD-32: a token whose aud is another resource is invalid_token (RFC 8707 §2, RFC 9068 §4)."""
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=stack.other)
    response = _post(stack.mcp, authorization=f"DPoP {token}", proof=_proof(key, stack.mcp, token))
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"
    # the same AS, the right resource: accepted (the refusal above is the audience)
    good = agent_token(stack.issuer, key, resource=stack.mcp)
    response = _post(stack.mcp, authorization=f"DPoP {good}", proof=_proof(key, stack.mcp, good))
    assert response.status_code == 200


# -- in process: the low-level server, scopes, nonces, the iat window, proxies ------------


def _guard(stack: Stack, audience: str, **kw: Any) -> AsyncResourceGuard:
    tokens = AsyncJWTAccessTokens(issuer=stack.issuer, audience=audience, allow_insecure_http=True)
    return AsyncResourceGuard(
        tokens=tokens, replay=AsyncMemoryReplayCache(single_process=True), **kw
    )


def _lowlevel_server() -> Any:
    from mcp import types
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.lowlevel import Server

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {}}
        return types.ListToolsResult(tools=[types.Tool(name="whoami", input_schema=schema)])

    async def call_tool(ctx: Any, params: Any) -> types.CallToolResult:
        token = get_access_token()
        assert token is not None
        who = {
            "authenticated": True,
            "sub": token.subject,
            "client_id": token.client_id,
            "scopes": token.scopes,
            "jkt": (token.claims or {}).get("cnf", {}).get("jkt"),
        }
        return types.CallToolResult(content=[], structured_content=who)

    return Server("low-level", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("kind", ["mcpserver", "lowlevel"])
def test_mcp_both_sdk_servers_hand_the_principal_to_tools(stack: Stack, kind: str) -> None:
    """HD-32: MCPServer and the low-level Server: get_access_token has it (RFC 9449 §6)."""
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    server = build_server() if kind == "mcpserver" else _lowlevel_server()
    app = MCPResourceAuth(
        server.streamable_http_app(),
        guard=_guard(stack, url),
        resource=url,
        authorization_servers=[stack.issuer],
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=url)
    with serve_with_lifespan(app, stack.inproc_port):
        # RFC 9110 §11.1: the scheme is case-insensitive.
        _, who = anyio.run(call_tools, url, ProofAuth(key, token, scheme="dpop"))
    assert who["client_id"] == "mcp-agent"
    assert who["scopes"] == ["mcp:tools"]
    assert who["jkt"] == key.jkt


def test_mcp_missing_scope_is_403_insufficient_scope(stack: Stack) -> None:
    """HD-32: a missing scope is 403 insufficient_scope with scope= (RFC 6750 §3.1)."""
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=_guard(stack, url, required_scopes=["mcp:admin"]),
        resource=url,
        authorization_servers=[stack.issuer],
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=url)
    with serve_with_lifespan(app, stack.inproc_port):
        response = _post(url, authorization=f"DPoP {token}", proof=_proof(key, url, token))
    assert response.status_code == 403
    params = _challenge(response)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "mcp:admin"
    assert params["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp")


def test_mcp_required_nonce_is_answered_once_and_the_call_succeeds(stack: Stack) -> None:
    """HD-32: a required nonce: 401 use_dpop_nonce with DPoP-Nonce, then the call (RFC 9449 §9)."""
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    nonces = NonceIssuer(secrets=[b"n" * 32], context="rs:" + url)
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=_guard(stack, url, policy=ProofPolicy(require_nonce=True), nonces=nonces),
        resource=url,
        authorization_servers=[stack.issuer],
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=url)
    with serve_with_lifespan(app, stack.inproc_port):
        first = _post(url, authorization=f"DPoP {token}", proof=_proof(key, url, token))
        assert first.status_code == 401
        assert _challenge(first)["error"] == "use_dpop_nonce"
        assert first.headers["DPoP-Nonce"]
        auth = ProofAuth(key, token)
        _, who = anyio.run(call_tools, url, auth)
    assert who["jkt"] == key.jkt
    assert auth.statuses[0] == 401


@pytest.mark.parametrize(
    ("offset", "accepted"), [(-290, True), (290, True), (-310, False), (310, False)]
)
def test_mcp_stateless_preset_is_a_300_second_iat_window(
    stack: Stack, offset: float, accepted: bool
) -> None:
    """HD-32: the stateless preset accepts iat within ±300 s, not beyond (RFC 9449 §11.1)."""
    import time

    assert STATELESS_IAT_WINDOW == 300
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=_guard(stack, url, policy=stateless_proof_policy()),
        resource=url,
        authorization_servers=[stack.issuer],
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=url)
    proof = create_proof(
        key,
        htm="POST",
        htu=url,
        access_token=token,
        now=time.time() + offset,
        allow_insecure_http=True,
    )
    with serve_with_lifespan(app, stack.inproc_port):
        response = _post(url, authorization=f"DPoP {token}", proof=proof)
    if accepted:
        assert response.status_code == 200
    else:
        assert response.status_code == 401
        assert _challenge(response)["error"] == "invalid_dpop_proof"


def test_mcp_get_stream_needs_its_own_proof(stack: Stack) -> None:
    """HD-32: the GET/SSE stream needs its own proof with htm GET (RFC 9449 §4.3 (8))."""
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=_guard(stack, url),
        resource=url,
        authorization_servers=[stack.issuer],
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=url)
    auth = {"Authorization": f"DPoP {token}"}
    with serve_with_lifespan(app, stack.inproc_port), httpx.Client(timeout=10) as http:
        init = _post(url, authorization=auth["Authorization"], proof=_proof(key, url, token))
        assert init.status_code == 200
        session = {
            "Mcp-Session-Id": init.headers["Mcp-Session-Id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        wrong = http.get(url, headers={**auth, **session, "DPoP": _proof(key, url, token)})
        assert wrong.status_code == 401
        assert _challenge(wrong)["error"] == "invalid_dpop_proof"
        headers = {**auth, **session, "Accept": "text/event-stream"}
        headers["DPoP"] = _proof(key, url, token, htm="GET")
        with http.stream("GET", url, headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")


def test_mcp_behind_a_proxy_checks_the_public_url(stack: Stack) -> None:
    """HD-32: behind trusted proxies the htu is the public URL (RFC 9449 §4.3 (9))."""
    from dpopkit.resource import ProxyTrust

    internal = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=_guard(stack, PROXIED),
        resource=PROXIED,
        authorization_servers=[stack.issuer],
        trusted_proxies=ProxyTrust(proto=1, host=1),
    )
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=PROXIED)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "mcp.example.com"}
    auth = f"DPoP {token}"
    with serve_with_lifespan(app, stack.inproc_port), httpx.Client(timeout=10) as http:
        headers = {**MCP_HEADERS, **forwarded, "Authorization": auth}
        ok = http.post(
            internal, json=INIT, headers={**headers, "DPoP": _proof(key, PROXIED, token)}
        )
        assert ok.status_code == 200
        bad = http.post(
            internal, json=INIT, headers={**headers, "DPoP": _proof(key, internal, token)}
        )
        assert bad.status_code == 401
        assert _challenge(bad)["error"] == "invalid_dpop_proof"
        missing = http.post(
            internal,
            json=INIT,
            headers={**MCP_HEADERS, "Authorization": auth, "DPoP": _proof(key, PROXIED, token)},
        )
        assert missing.status_code == 400
        doc = http.get(
            f"http://127.0.0.1:{stack.inproc_port}/.well-known/oauth-protected-resource/mcp"
        ).json()
    assert doc["resource"] == PROXIED


def test_mcp_example_command_line_static_jwks_audience_and_nonce(
    stack: Stack, tmp_path: Path
) -> None:
    """HD-32: the example's --jwks, --audience and --require-nonce, end to end (RFC 9449 §9)."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(httpx.get(stack.issuer + "/jwks").text, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    argv = [sys.executable, str(EXAMPLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--issuer", stack.issuer, "--jwks", str(jwks), "--audience", stack.other]
    argv += ["--require-nonce", "--allow-insecure-http"]
    key = DPoPKey.generate()
    token = agent_token(stack.issuer, key, resource=stack.other)
    with process(argv, f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"):
        first = _post(url, authorization=f"DPoP {token}", proof=_proof(key, url, token))
        assert first.status_code == 401
        assert _challenge(first)["error"] == "use_dpop_nonce"
        auth = ProofAuth(key, token)
        _, who = anyio.run(call_tools, url, auth)
        # the default audience (the endpoint's own URL) is not what this server expects
        mine = agent_token(stack.issuer, key, resource=stack.mcp)
        proof = create_proof(
            key, htm="POST", htu=url, access_token=mine, nonce=auth.nonce, allow_insecure_http=True
        )
        wrong_aud = _post(url, authorization=f"DPoP {mine}", proof=proof)
    assert who["jkt"] == key.jkt
    assert auth.statuses[0] == 401
    assert wrong_aud.status_code == 401
    assert _challenge(wrong_aud)["error"] == "invalid_token"


def test_mcp_unbound_bearer_only_when_allowed(stack: Stack) -> None:
    """HD-32: an unbound Bearer token is refused unless accept_bearer (RFC 9449 §7.1, §7.2)."""
    token = unbound_token(stack.issuer, resource=stack.mcp)
    refused = _post(stack.mcp, authorization=f"Bearer {token}", proof=None)
    assert refused.status_code == 401
    assert _challenge(refused)["error"] == "invalid_token"
    url = f"http://127.0.0.1:{stack.inproc_port}/mcp"
    inproc = unbound_token(stack.issuer, resource=url)
    with pytest.warns(SecurityWarning):
        guard = _guard(stack, url, accept_bearer=True)
    app = MCPResourceAuth(
        build_server().streamable_http_app(),
        guard=guard,
        resource=url,
        authorization_servers=[stack.issuer],
    )
    with serve_with_lifespan(app, stack.inproc_port):
        accepted = _post(url, authorization=f"Bearer {inproc}", proof=None)
        anonymous = _post(url, authorization=None, proof=None)
        doc = httpx.get(
            f"http://127.0.0.1:{stack.inproc_port}/.well-known/oauth-protected-resource/mcp"
        ).json()
    assert accepted.status_code == 200
    schemes = [c.scheme for c in parse_challenges(anonymous.headers["WWW-Authenticate"])]
    assert schemes == ["Bearer", "DPoP"]
    assert all(
        c.params["resource_metadata"].endswith("/mcp")
        for c in parse_challenges(anonymous.headers["WWW-Authenticate"])
    )
    assert doc["dpop_bound_access_tokens_required"] is False
