"""Plug-ins that add DPoP (RFC 9449) to other stacks, each behind its own extra.

Nothing is imported here: ``dpopkit.integrations.mcp.server`` needs ``dpopkit[mcp]``,
``dpopkit.integrations.authlib`` needs ``dpopkit[authlib]``.
"""

from __future__ import annotations
