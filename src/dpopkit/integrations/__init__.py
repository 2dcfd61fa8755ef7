"""Plug-ins that add DPoP to servers built on other libraries."""
