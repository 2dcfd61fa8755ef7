"""DPoP for the Model Context Protocol on the official ``mcp`` SDK (the ``dpopkit[mcp]`` extra)."""
