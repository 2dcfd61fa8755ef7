"""An MCP client on the official SDK that gets DPoP-bound tokens: ``python client.py URL``.

Connects to the MCP server at URL (Streamable HTTP), runs the whole MCP
authorization flow with DPoP (discovery from the 401, metadata, registration or
a client ID metadata document, PKCE S256, ``resource``, ``dpop_jkt``, a proof on
every token and MCP request), lists the tools and calls the first one that
needs no arguments (``--tool``/``--args`` to choose). The exit status is 0 only
when the tool answered without an error.

The authorization callback comes back to a one-shot loopback listener
(RFC 8252 §7.3). The authorization URL is opened in a browser; with
``--no-browser`` (or when run by the MCP conformance harness, which sets
``MCP_CONFORMANCE_SCENARIO`` and approves every request) it is fetched and its
redirects followed to the listener instead.

The key and tokens live in ``--state DIR`` (a fresh temporary directory when not
given): rerun with the same directory and the stored, DPoP-bound tokens are
used and refreshed with the same key. ``http://`` is allowed for loopback hosts
only. A pre-registered client comes from ``--client-id``/``--client-secret`` or
the harness's ``MCP_CONFORMANCE_CONTEXT``. Tokens must come back DPoP-bound;
``--bearer-fallback`` accepts Bearer tokens from an authorization server whose
metadata does not offer DPoP (for a resource that does not demand it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import webbrowser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata
from pydantic import AnyUrl

from dpopkit.client._loopback import LoopbackListener
from dpopkit.integrations.mcp.client import (
    DPoPClientCredentialsProvider,
    DPoPOAuthClientProvider,
    FileTokenStorage,
)

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
#: The client ID metadata document URL the conformance harness expects (SEP-991).
CIMD_URL = "https://conformance-test.local/client-metadata.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument("--state", help="directory for the DPoP key, tokens and registration")
    parser.add_argument("--client-id", help="a pre-registered client_id")
    parser.add_argument("--client-secret", help="its secret (client_secret_basic)")
    parser.add_argument("--client-metadata-url", help="an https client ID metadata document URL")
    parser.add_argument("--no-browser", action="store_true", help="fetch the authorization URL")
    parser.add_argument(
        "--client-credentials",
        action="store_true",
        help="a machine client: the client credentials grant with --client-id/--client-secret",
    )
    parser.add_argument("--issuer", help="the AS that issued the client credentials")
    parser.add_argument("--tool", help="the tool to call (the first listed when omitted)")
    parser.add_argument("--args", default="{}", help="the tool arguments as JSON")
    parser.add_argument(
        "--bearer-fallback",
        action="store_true",
        help="accept Bearer tokens from an AS that does not offer DPoP (refused by default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def harness_context() -> dict[str, Any]:
    """The conformance harness's scenario context (a pre-registered client), if any."""
    raw = os.environ.get("MCP_CONFORMANCE_CONTEXT")
    if not raw:
        return {}
    data = json.loads(raw)
    return data if isinstance(data, dict) else {}


async def run(args: argparse.Namespace) -> int:
    """Authorize with DPoP, list the tools and call one."""
    harness = "MCP_CONFORMANCE_SCENARIO" in os.environ
    unattended = args.no_browser or harness
    context = harness_context()
    client_id = args.client_id or context.get("client_id")
    client_secret = args.client_secret or context.get("client_secret")
    metadata_url = args.client_metadata_url or (CIMD_URL if harness else None)
    state_dir = args.state or tempfile.mkdtemp(prefix="dpopkit-mcp-")
    storage = FileTokenStorage(state_dir)
    insecure = urlsplit(args.url).hostname in LOOPBACK_HOSTS

    machine = args.client_credentials or (
        os.environ.get("MCP_CONFORMANCE_SCENARIO") == "auth/client-credentials-basic"
    )
    if machine:
        if not client_id or not client_secret:
            raise SystemExit("the client credentials grant needs --client-id and --client-secret")
        machine_auth = DPoPClientCredentialsProvider(
            args.url,
            storage=storage,
            client_id=client_id,
            client_secret=client_secret,
            issuer=args.issuer,
            key=storage.key,
            allow_insecure_http=insecure,
            bearer_fallback=args.bearer_fallback,
        )
        return await call_tools(args, machine_auth)

    with LoopbackListener("/callback") as listener:
        if client_id and await storage.get_client_info() is None:
            await storage.set_client_info(
                OAuthClientInformationFull(
                    client_id=client_id,
                    client_secret=client_secret,
                    redirect_uris=[AnyUrl(listener.redirect_uri)],
                    token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
                )
            )

        async def open_authorization(url: str) -> None:
            listener.expect()  # a step-up authorization needs a second callback
            if not unattended:
                print(f"Opening {url}", file=sys.stderr)
                webbrowser.open(url)
                return
            # An auto-approving AS redirects straight to our listener.
            async with httpx2.AsyncClient(follow_redirects=True, timeout=30) as http:
                await http.get(url)

        async def receive_callback() -> AuthorizationCodeResult:
            callback = await anyio.to_thread.run_sync(listener.wait, 300.0)
            query = parse_qs(urlsplit(callback).query)

            def one(name: str) -> str | None:
                """The first value of a callback query parameter."""
                values = query.get(name)
                return values[0] if values else None

            return AuthorizationCodeResult(
                code=one("code") or "", state=one("state"), iss=one("iss")
            )

        auth = DPoPOAuthClientProvider(
            server_url=args.url,
            client_metadata=OAuthClientMetadata(
                client_name="dpopkit MCP example",
                redirect_uris=[AnyUrl(listener.redirect_uri)],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",  # noqa: S106 (a public client)
            ),
            storage=storage,
            key=storage.key,
            redirect_handler=open_authorization,
            callback_handler=receive_callback,
            client_metadata_url=metadata_url,
            allow_insecure_http=insecure,
            bearer_fallback=args.bearer_fallback,
        )
        return await call_tools(args, auth)


async def call_tools(args: argparse.Namespace, auth: httpx2.Auth) -> int:
    """Connect with ``auth``, list the tools and call one."""
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        transport = streamable_http_client(url=args.url, http_client=http)
        async with Client(transport) as client:
            tools = (await client.list_tools()).tools
            print("tools:", ", ".join(tool.name for tool in tools))
            if not tools:
                return 0
            name = args.tool or first_callable(tools)
            result = await client.call_tool(name, json.loads(args.args))
            for item in result.content:
                print(f"{name}:", getattr(item, "text", item))
            if result.is_error:
                print(f"{name}: the tool answered with an error", file=sys.stderr)
                return 1
    return 0


def first_callable(tools: list[Any]) -> str:
    """The first tool that needs no arguments (else the first tool)."""
    for tool in tools:
        schema = getattr(tool, "input_schema", None) or {}
        if not schema.get("required"):
            return str(tool.name)
    return str(tools[0].name)


def main(argv: list[str] | None = None) -> int:
    """Run the client; the exit status is 0 when the tool was called."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return anyio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
