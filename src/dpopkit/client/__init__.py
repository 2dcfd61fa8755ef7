"""The DPoP client: sign every request, cache nonces per origin, retry once, get tokens.

Adapters live in submodules so that each optional dependency is imported only
where it is needed: :mod:`dpopkit.client.httpx` (``httpx``),
:mod:`dpopkit.client.requests` (``requests``); :mod:`dpopkit.client.flow` is the
sans-I/O state machine they share and :mod:`dpopkit.client.tokens` the token
flows (standard library only).
"""

from __future__ import annotations

from dpopkit.client.flow import DONE, Done, DPoPFlow, NonceCache, Retry

__all__ = ["DONE", "DPoPFlow", "Done", "NonceCache", "Retry"]
