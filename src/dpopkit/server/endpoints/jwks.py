"""``/jwks``: the JWK Set of the access-token signing keys (RFC 7517 §5).

Resource servers fetch it to verify RFC 9068 access tokens; it lists the current
key and the retired ones still inside their grace period. Cached for a minute.
"""

from __future__ import annotations

import json

from dpopkit.core.http import ResponseView
from dpopkit.server.core import ServiceCore
from dpopkit.storage.sql import StoreError

__all__ = ["handle"]


def handle(service: ServiceCore) -> ResponseView:
    """The JWK Set; 503 if the store fails."""
    try:
        keys = service.keyring.jwks(now=service.clock())
    except StoreError as exc:
        return service.error_response(exc)
    return ResponseView(
        status=200,
        headers=(("Content-Type", "application/json"), ("Cache-Control", "max-age=60")),
        body=json.dumps(keys).encode(),
    )
