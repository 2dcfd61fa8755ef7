"""DPoP for the official MCP Python SDK (``pip install 'dpopkit[mcp]'``).

* :mod:`dpopkit.integrations.mcp.server`: protect a Streamable HTTP MCP server.

The submodules are imported on use, so importing one side never needs the other's
dependencies.
"""

from __future__ import annotations
