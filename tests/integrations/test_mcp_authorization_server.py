"""``dpopkit serve`` as an MCP authorization server, driven the way MCP clients drive it.

Discovery (RFC 8414), dynamic registration of a public client with loopback redirect
URIs (RFC 7591, RFC 8252 §7.3), the authorization code with PKCE S256, ``resource``
(RFC 8707) and ``dpop_jkt`` (RFC 9449 §10), then the MCP call with the DPoP-bound token.
The AS runs in test mode (``test_mode_user``), so the authorization endpoint
redirects at once, as the MCP conformance harness needs.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx

from dpopkit import DPoPKey
from dpopkit.client.tokens import TokenClient

from ._mcp_support import ProofAuth, Stack, call_tools


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(data, dict)
    return data


def test_mcp_as_metadata_has_what_mcp_clients_use(stack: Stack) -> None:
    """HD-32: RFC 8414 metadata with PKCE S256, registration, iss and DPoP algs (RFC 9449 §5.1)."""
    doc = httpx.get(stack.issuer + "/.well-known/oauth-authorization-server").json()
    assert doc["issuer"] == stack.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["registration_endpoint"] == stack.issuer + "/register"
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert "ES256" in doc["dpop_signing_alg_values_supported"]
    assert "none" in doc["token_endpoint_auth_methods_supported"]
    assert {"authorization_code", "refresh_token"} <= set(doc["grant_types_supported"])


def _register(stack: Stack, redirect: str) -> str:
    response = httpx.post(
        stack.issuer + "/register",
        json={
            "redirect_uris": [redirect],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "an MCP client",
            "scope": "mcp:tools",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token_endpoint_auth_method"] == "none"
    assert body["dpop_bound_access_tokens"] is True
    return str(body["client_id"])


def _authorize(stack: Stack, resource: str) -> tuple[TokenClient, Any, str]:
    redirect = "http://127.0.0.1:33418/callback"
    client_id = _register(stack, redirect)
    client = TokenClient.from_issuer(
        stack.issuer, key=DPoPKey.generate(), client_id=client_id, allow_insecure_http=True
    )
    request = client.authorization_request(
        redirect_uri=redirect, scope="mcp:tools", resource=resource, use_par=False
    )
    answer = httpx.get(request.url, follow_redirects=False)
    assert answer.status_code in (302, 303), answer.text
    return client, request, answer.headers["Location"]


def test_mcp_as_registered_client_gets_a_token_for_the_mcp_server(stack: Stack) -> None:
    """HD-32: registration, code with PKCE, resource -> aud, refresh keeps the key (RFC 8707 §2)."""
    client, request, callback = _authorize(stack, stack.mcp)
    assert callback.startswith("http://127.0.0.1:33418/callback?")
    tokens = client.exchange_code(request, callback)
    assert tokens.token_type.lower() == "dpop"
    claims = _claims(tokens.access_token)
    assert claims["aud"] in (stack.mcp, [stack.mcp])
    assert claims["sub"] == "alice"
    assert claims["cnf"]["jkt"] == request.key.jkt
    _, who = anyio.run(call_tools, stack.mcp, ProofAuth(request.key, tokens.access_token))
    assert who["sub"] == "alice"
    assert who["jkt"] == request.key.jkt
    refreshed = client.refresh(tokens)
    assert _claims(refreshed.access_token)["cnf"]["jkt"] == request.key.jkt


def test_mcp_as_refuses_a_resource_it_does_not_serve(stack: Stack) -> None:
    """HD-32: a resource outside the registration policy is invalid_target (RFC 8707 §2)."""
    _, _, callback = _authorize(stack, "https://elsewhere.example/mcp")
    query = parse_qs(urlsplit(callback).query)
    assert query["error"] == ["invalid_target"]
    assert query["iss"] == [stack.issuer]
    assert "code" not in query
