"""Plug-ins that add DPoP (RFC 9449) to other stacks, each behind its own extra.

Nothing is imported here: ``dpopkit.integrations.mcp.server`` needs ``dpopkit[mcp]``,
``dpopkit.integrations.authlib`` needs ``dpopkit[authlib]`` and
``dpopkit.integrations.django_oauth_toolkit`` needs ``dpopkit[django-oauth-toolkit]``.
"""

from __future__ import annotations
