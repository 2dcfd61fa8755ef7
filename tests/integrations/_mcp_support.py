"""Real processes and an MCP client for the MCP integration tests.

The authorization server is ``dpopkit serve`` (a subprocess with a TOML
configuration), the MCP server is ``examples/mcp/server.py`` (a subprocess) or an
app served by uvicorn in a thread, and the MCP client is the official SDK's
Streamable HTTP client with a minimal DPoP ``httpx2.Auth`` (a proof per request,
one retry per fresh ``DPoP-Nonce``).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import uvicorn

from dpopkit import DPoPKey, create_proof
from dpopkit.client.tokens import TokenClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SERVER = ROOT / "examples" / "mcp" / "server.py"
AGENT_SECRET = "mcp-agent-secret-value"

AS_CONFIG = """
issuer = "http://127.0.0.1:{as_port}"
host = "127.0.0.1"
port = {as_port}
data_dir = "{data}"
replay_url = "sqlite"
test_mode_user = "alice"
registration_enabled = true
registration_allowed_scopes = ["mcp:tools"]
registration_allowed_audiences = ["{mcp}"]
allowed_resources = {resources}

[dpop]
nonce = "{nonce}"

[tokens]
audience = ["{mcp}"]

[[clients]]
client_id = "mcp-agent"
client_secret = "{secret}"
grant_types = ["client_credentials"]
scope = "mcp:tools"
dpop_bound_access_tokens = true

[[clients]]
client_id = "bearer-agent"
client_secret = "{secret}"
grant_types = ["client_credentials"]
scope = "mcp:tools"

[[clients]]
client_id = "conformance"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["http://127.0.0.1:3000/callback"]
scope = "mcp:tools"
"""


def example_server() -> Any:
    """``examples/mcp/server.py`` as a module (its ``build_server`` and ``build_app``)."""
    spec = importlib.util.spec_from_file_location("dpopkit_example_mcp_server", EXAMPLE_SERVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(argv: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until ``ready_url`` answers (any status), then stop it."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{argv[1:3]} exited: {err[-2000:]}")
            try:
                httpx.get(ready_url, timeout=1)
                break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv[1:3]} did not start")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def authorization_server(
    data: Path, *, mcp: str, others: list[str], nonce: str = "per_client"
) -> Iterator[str]:
    """``dpopkit serve`` issuing tokens for ``mcp`` (default audience) and ``others``.

    ``nonce`` is its ``[dpop] nonce`` policy (``off``, ``per_client`` or ``always``).
    """
    port = free_port()
    config = data / "as.toml"
    config.write_text(
        AS_CONFIG.format(
            as_port=port,
            data=data / "as-data",
            mcp=mcp,
            resources=json.dumps([mcp, *others]),
            secret=AGENT_SECRET,
            nonce=nonce,
        ),
        encoding="utf-8",
    )
    issuer = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "dpopkit", "serve", "--config", str(config)]
    with process(argv, issuer + "/jwks"):
        yield issuer


def agent_token(issuer: str, key: DPoPKey, *, resource: str | None = None) -> str:
    """A DPoP-bound access token for ``mcp-agent`` (client credentials, RFC 9449 §5)."""
    client = TokenClient.from_issuer(
        issuer,
        key=key,
        client_id="mcp-agent",
        client_secret=AGENT_SECRET,
        allow_insecure_http=True,
    )
    tokens = client.client_credentials(scope="mcp:tools", resource=resource)
    assert tokens.token_type.lower() == "dpop"
    return tokens.access_token


def unbound_token(issuer: str, *, resource: str) -> str:
    """An unbound (Bearer) access token: a token request without a proof (RFC 6750)."""
    response = httpx.post(
        issuer + "/token",
        data={"grant_type": "client_credentials", "scope": "mcp:tools", "resource": resource},
        auth=("bearer-agent", AGENT_SECRET),
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    return str(response.json()["access_token"])


class ProofAuth(httpx2.Auth):
    """``Authorization: DPoP`` and a fresh proof on every request of the SDK's client."""

    def __init__(self, key: DPoPKey, token: str, *, scheme: str = "DPoP") -> None:
        self.key = key
        self.token = token
        self.scheme = scheme
        self.nonce: str | None = None
        self.statuses: list[int] = []

    def _sign(self, request: httpx2.Request) -> None:
        request.headers["Authorization"] = f"{self.scheme} {self.token}"
        request.headers["DPoP"] = create_proof(
            self.key,
            htm=request.method,
            htu=str(request.url),
            access_token=self.token,
            nonce=self.nonce,
            allow_insecure_http=True,
        )

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        self._sign(request)
        response = yield request
        self.statuses.append(response.status_code)
        fresh = response.headers.get("DPoP-Nonce")
        if response.status_code == 401 and fresh and fresh != self.nonce:
            self.nonce = fresh
            self._sign(request)
            response = yield request
            self.statuses.append(response.status_code)
        elif fresh:
            self.nonce = fresh


async def call_tools(url: str, auth: ProofAuth) -> tuple[list[str], dict[str, Any]]:
    """Connect with the SDK's Streamable HTTP client, list the tools, call ``whoami``."""
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        result = await session.call_tool("whoami", {})
        assert not result.is_error, result
        structured = result.structured_content
        assert isinstance(structured, dict)
        data = structured.get("result", structured)
        return sorted(t.name for t in tools.tools), dict(data)


@contextmanager
def serve_with_lifespan(app: Any, port: int = 0) -> Iterator[str]:
    """Serve an ASGI app (its lifespan included) on a loopback port; yield the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


PROXIED = "https://mcp.example.com/mcp"


@dataclass
class Stack:
    issuer: str
    mcp: str
    other: str
    metadata_url: str
    inproc_port: int


@contextmanager
def mcp_stack(tmp: Path, *, nonces: bool = False) -> Iterator[Stack]:
    """Our AS and the example MCP server as two processes.

    With ``nonces``, both demand DPoP server nonces (RFC 9449 §8, §9): the AS
    with ``[dpop] nonce = "always"``, the MCP server with ``--require-nonce``.
    """
    port = free_port()
    mcp = f"http://127.0.0.1:{port}/mcp"
    other = f"http://127.0.0.1:{port}/other-mcp"
    inproc = free_port()
    others = [other, f"http://127.0.0.1:{inproc}/mcp", PROXIED]
    nonce = "always" if nonces else "per_client"
    with authorization_server(tmp, mcp=mcp, others=others, nonce=nonce) as iss:
        argv = [sys.executable, str(EXAMPLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--issuer", iss, "--allow-insecure-http"]
        if nonces:
            argv.append("--require-nonce")
        metadata_url = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
        with process(argv, metadata_url):
            yield Stack(
                issuer=iss, mcp=mcp, other=other, metadata_url=metadata_url, inproc_port=inproc
            )
