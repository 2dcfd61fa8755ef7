"""docs/mcp.md "Protect an MCP server": an MCPServer tool, with only ``dpopkit[mcp]`` installed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from dpopkit.integrations.mcp.server import protect
from dpopkit.resource import AsyncJWTAccessTokens, AsyncResourceGuard
from dpopkit.storage.memory import AsyncMemoryReplayCache
from tests.extras._common import API_ORIGIN, ISSUER, bound_token, check, dpop_headers

server = MCPServer("orders")


@server.tool()
def whoami() -> dict[str, Any]:
    """The caller's subject."""
    token = get_access_token()
    return {"sub": token.subject if token else None}


guard = AsyncResourceGuard(
    tokens=AsyncJWTAccessTokens(issuer=ISSUER, audience=ISSUER, allow_insecure_http=True),
    replay=AsyncMemoryReplayCache(single_process=True),
)
security = TransportSecuritySettings(allowed_hosts=["api.example.com"])
app = protect(
    server.streamable_http_app(
        stateless_http=True, json_response=True, transport_security=security
    ),
    guard=guard,
    resource=API_ORIGIN + "/mcp",
    authorization_servers=[ISSUER],
)


async def main() -> None:
    key, token = bound_token()
    url = API_ORIGIN + "/mcp"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    call["params"] = {"name": "whoami", "arguments": {}}
    headers = {
        **dpop_headers(key, token, method="POST", url=url),
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    async with server.session_manager.run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(url, json=call, headers=headers)
    body = response.json()
    result = body.get("result", {}).get("structuredContent", {})
    check(response.status_code, result.get("result", result))


asyncio.run(main())
