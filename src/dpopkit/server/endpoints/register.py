"""``/register``: dynamic client registration (RFC 7591 §3), framework-free.

Enabled only by configuration (``registration_enabled``). The request is RFC
7591 §2 JSON metadata, checked by :mod:`dpopkit.server.client_metadata` under the
registration policy; the response is 201 with the client's metadata, a new
``client_id`` and, for confidential clients, a ``client_secret`` shown once
(only its scrypt hash is stored). Each client address has an hourly budget.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.errors import DPoPError, InvalidRequestError, Reason
from dpopkit.server.client_metadata import (
    InvalidClientMetadataError,
    apply_registration_policy,
    client_from_metadata,
)
from dpopkit.server.core import ServiceCore
from dpopkit.server.parsing import parse_json_object
from dpopkit.server.settings import ServerSettings
from dpopkit.server.throttle import SCRYPT_LIMITER, RateLimitedError, RateLimiter, WorkLimiter
from dpopkit.storage.counters import CounterStore
from dpopkit.storage.sql import StoreError

__all__ = ["handle_register", "registration_rate_limiter"]


def registration_rate_limiter(
    settings: ServerSettings,
    *,
    clock: Callable[[], float] = time.time,
    counters: CounterStore | None = None,
) -> RateLimiter:
    """The per-address limiter of ``/register``: ``registration_rate_limit`` an hour.

    HD-2, RFC 7591 §5. Without ``counters`` it is in memory and per process (bounded to
    10,000 addresses): several processes each allow the limit. With a shared
    ``counters`` store (Redis) every process that shares it enforces one limit.
    """
    return RateLimiter(
        limit=settings.registration_rate_limit,
        window=3600.0,
        clock=clock,
        state=counters,
        name="register",
    )


def handle_register(
    service: ServiceCore,
    request: RequestView,
    *,
    limiter: RateLimiter | None = None,
    scrypt: WorkLimiter | None = None,
) -> ResponseView:
    """Register a client (RFC 7591 §3); 201 with its metadata and credentials.

    Args:
        service: the token service (settings with the registration policy, store).
        request: the registration request.
        limiter: per-client-address rate limit (429 with ``Retry-After`` when spent;
            503 ``temporarily_unavailable`` when its shared store cannot answer).
        scrypt: bounds concurrent scrypt work (the shared limiter by default).
    """
    now = service.clock()
    headers = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
    try:
        if limiter is not None:
            wait = limiter.hit(request.client_address or "unknown")
            if wait:
                raise RateLimitedError(wait)
        if request.method != "POST":
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "POST JSON metadata")
        try:
            # One JSON object, bounded and checked (dpopkit.server.parsing).
            meta = parse_json_object(request)
        except InvalidRequestError as exc:
            raise InvalidClientMetadataError(exc.reason, exc.description) from None
        meta = apply_registration_policy(meta, service.settings)
        method = meta.get("token_endpoint_auth_method", "client_secret_basic")
        if not isinstance(method, str):
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "bad auth method")
        secret = secrets.token_urlsafe(32) if method.startswith("client_secret") else None
        # Validate everything before paying for scrypt.
        client = client_from_metadata(
            meta, client_id=secrets.token_urlsafe(16), secret_hash=None, now=now
        )
        if secret is not None:
            secret_hash = (scrypt or SCRYPT_LIMITER).hash(secret)
            client = replace(client, secret_hash=secret_hash)
        client = replace(client, registered=True)
        service.store.put_client(client)
        out = client.metadata()
        if secret is not None:
            out["client_secret"] = secret
            out["client_secret_expires_at"] = 0
        return ResponseView(status=201, headers=headers, body=json.dumps(out).encode())
    except (DPoPError, StoreError) as exc:
        return service.error_response(exc)
