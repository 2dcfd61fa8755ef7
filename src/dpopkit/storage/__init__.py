"""Replay caches and grant stores: memory, SQLite, Redis, PostgreSQL."""
