"""docs/storage.md: a PostgreSQL replay cache, with only ``dpopkit[postgres]`` installed."""

from __future__ import annotations

import os
import secrets
import time

from dpopkit import DPoPKey, InvalidProofError, create_proof, record_proof, verify_proof
from dpopkit.storage.postgres import PostgresReplayCache

dsn = os.environ.get("DPOPKIT_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
schema = f"extras_{secrets.token_hex(4)}"
cache = PostgresReplayCache(dsn, schema=schema)
key = DPoPKey.generate()
proof = create_proof(key, htm="GET", htu="https://api.example.com/orders")
checked = verify_proof(proof, htm="GET", htu="https://api.example.com/orders", now=time.time())
try:
    record_proof(cache, checked, now=time.time())
    try:
        record_proof(cache, checked, now=time.time())
    except InvalidProofError as exc:
        print("ok", exc.reason)
    else:
        raise SystemExit("a replayed proof was accepted")
finally:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # a name of our own making
    cache.close()
