"""Plug-ins that add DPoP (RFC 9449) to other OAuth libraries, each behind its own extra."""
