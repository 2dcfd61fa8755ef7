"""Tests of the plug-ins that add DPoP to other servers."""
