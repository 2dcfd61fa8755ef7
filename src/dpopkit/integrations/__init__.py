"""Integrations of dpopkit with other stacks, one optional extra each.

Nothing is imported here: ``dpopkit.integrations.mcp.server`` needs ``dpopkit[mcp]``.
"""

from __future__ import annotations
