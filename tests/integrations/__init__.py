"""Tests of the integrations (one optional extra each)."""
