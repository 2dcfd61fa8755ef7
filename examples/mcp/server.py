"""A DPoP-protected MCP tool server on the official MCP Python SDK.

    python examples/mcp/server.py --host 127.0.0.1 --port 8001 \
        --issuer http://127.0.0.1:8000 --allow-insecure-http

serves the MCP Streamable HTTP endpoint at ``http://HOST:PORT/mcp``. It trusts
JWT access tokens (RFC 9068) from ``--issuer``, with keys from ``--jwks FILE`` (a
static JWKS) or else from the issuer's discovery document; the expected audience
is the endpoint's own URL unless ``--audience`` says otherwise. Every request
needs ``Authorization: DPoP`` and a proof (RFC 9449); ``--require-nonce`` also
demands server nonces (RFC 9449 §9).
"""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from dpopkit import NonceIssuer, ProofPolicy
from dpopkit.integrations.mcp.server import MCPResourceAuth, current_principal
from dpopkit.resource import AsyncResourceGuard
from dpopkit.resource.jwt_tokens import AsyncJWTAccessTokens
from dpopkit.storage.memory import AsyncMemoryReplayCache


def build_server() -> MCPServer:
    """The MCP server and its tools."""
    server = MCPServer("dpopkit example")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def whoami() -> dict[str, Any]:
        """Who called: the verified token's subject, client, scopes and key thumbprint."""
        token = get_access_token()
        principal = current_principal()
        if token is None or principal is None:
            return {"authenticated": False}
        return {
            "authenticated": True,
            "sub": token.subject,
            "client_id": token.client_id,
            "scopes": token.scopes,
            "jkt": principal.jkt,
            "cnf_jkt": (token.claims or {}).get("cnf", {}).get("jkt"),
        }

    return server


def build_app(
    *,
    host: str,
    port: int,
    issuer: str,
    jwks: dict[str, Any] | None = None,
    audience: str | None = None,
    require_nonce: bool = False,
    allow_insecure_http: bool = False,
) -> tuple[MCPServer, MCPResourceAuth]:
    """Build the protected ASGI app for ``http://HOST:PORT/mcp``."""
    endpoint = f"http://{host}:{port}/mcp"
    tokens = AsyncJWTAccessTokens(
        issuer=issuer,
        audience=audience or endpoint,
        jwks=jwks,
        allow_insecure_http=allow_insecure_http,
    )
    nonces = NonceIssuer(secrets=[secrets.token_bytes(32)], context="rs:" + endpoint)
    guard = AsyncResourceGuard(
        tokens=tokens,
        replay=AsyncMemoryReplayCache(single_process=True),
        policy=ProofPolicy(require_nonce=require_nonce),
        nonces=nonces if require_nonce else None,
    )
    server = build_server()
    app = MCPResourceAuth(
        server.streamable_http_app(host=host),
        guard=guard,
        resource=endpoint,
        authorization_servers=[issuer],
        resource_name="dpopkit example MCP server",
    )
    return server, app


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--jwks", type=Path, help="a static JWKS file (else discovery)")
    parser.add_argument("--audience", help="expected aud (default: the endpoint URL)")
    parser.add_argument("--require-nonce", action="store_true")
    parser.add_argument("--allow-insecure-http", action="store_true")
    args = parser.parse_args(argv)
    jwks = json.loads(args.jwks.read_text(encoding="utf-8")) if args.jwks else None
    _, app = build_app(
        host=args.host,
        port=args.port,
        issuer=args.issuer,
        jwks=jwks,
        audience=args.audience,
        require_nonce=args.require_nonce,
        allow_insecure_http=args.allow_insecure_http,
    )
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
