"""docs/storage.md: a Redis replay cache, with only ``dpopkit[redis]`` installed."""

from __future__ import annotations

import os
import secrets
import time

from dpopkit import DPoPKey, InvalidProofError, create_proof, record_proof, verify_proof
from dpopkit.storage.redis import RedisReplayCache

url = os.environ.get("DPOPKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
cache = RedisReplayCache.from_url(url, prefix=f"extras-{secrets.token_hex(4)}:")
key = DPoPKey.generate()
proof = create_proof(key, htm="GET", htu="https://api.example.com/orders")
checked = verify_proof(proof, htm="GET", htu="https://api.example.com/orders", now=time.time())
record_proof(cache, checked, now=time.time())
try:
    record_proof(cache, checked, now=time.time())
except InvalidProofError as exc:
    print("ok", exc.reason)
else:
    raise SystemExit("a replayed proof was accepted")
