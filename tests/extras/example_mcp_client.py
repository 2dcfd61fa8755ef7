"""DPoP client auth for the MCP SDK, with only ``dpopkit[mcp]`` installed.

The SDK's client-credentials flow with DPoP: the 401 from the protected route starts
discovery, the token request carries a proof, and the route is called again with
``Authorization: DPoP`` and a proof, through ``httpx2`` as the SDK sends it.
"""

from __future__ import annotations

import os
import tempfile

import anyio
import httpx2

from dpopkit.integrations.mcp.client import DPoPClientCredentialsProvider, FileTokenStorage
from tests.extras._common import ISSUER, check


async def main() -> None:
    storage = FileTokenStorage(tempfile.mkdtemp())
    auth = DPoPClientCredentialsProvider(
        ISSUER + "/api/whoami",
        storage=storage,
        client_id="demo-client",
        client_secret=os.environ["DPOPKIT_EXAMPLE_SECRET"],
        issuer=ISSUER,
        key=storage.key,
        allow_insecure_http=True,
    )
    async with httpx2.AsyncClient(auth=auth) as http:
        response = await http.get(ISSUER + "/api/whoami")
    check(response.status_code, response.json())


anyio.run(main)
