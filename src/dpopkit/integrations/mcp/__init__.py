"""DPoP for the official MCP Python SDK (``pip install 'dpopkit[mcp]'``).

* :mod:`dpopkit.integrations.mcp.server`: protect a Streamable HTTP MCP server;
* :mod:`dpopkit.integrations.mcp.client`: DPoP for the SDK's MCP client.

The submodules are imported on use, so importing one side never needs the other's
dependencies.
"""

from __future__ import annotations
