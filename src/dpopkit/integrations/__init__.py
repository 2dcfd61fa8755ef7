"""Integrations of dpopkit with other libraries, each behind an extra."""
