"""A small protected API: ``GET``/``POST /api/whoami`` answers the principal as JSON.

``dpopkit serve-api`` runs it under uvicorn; ``dpopkit serve`` mounts it next to
the authorization server. It is a plain ASGI app (no framework) behind
:class:`~dpopkit.resource.asgi.DPoPMiddleware`, validating RFC 9068 JWT access
tokens of any issuer found by discovery (or any validator passed in).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy
from dpopkit.core.replay import AsyncReplayCache
from dpopkit.resource._site import ProtectedResourceMetadata
from dpopkit.resource.asgi import ASGIApp, DPoPMiddleware, Receive, Scope, Send
from dpopkit.resource.guard import AsyncResourceGuard, GuardMetrics
from dpopkit.resource.tokens import AsyncJWTAccessTokens, AsyncTokenValidator, TokenValidator
from dpopkit.storage.memory import AsyncMemoryReplayCache

__all__ = ["WHOAMI_PATH", "create_whoami_app"]

WHOAMI_PATH = "/api/whoami"


async def _json(send: Send, status: int, body: object) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _whoami_endpoint(metrics: GuardMetrics, path: str) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        route = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        if route == "/metrics" and scope["method"] == "GET":
            data = metrics.prometheus_text().encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")],
                }
            )
            await send({"type": "http.response.body", "body": data})
            return
        if route != path:
            await _json(send, 404, {"error": "not_found"})
            return
        if scope["method"] not in ("GET", "POST"):
            # An OAuth error code (RFC 6750 §3.1), as every other rejection of this API.
            await _json(
                send, 405, {"error": "invalid_request", "error_description": "use GET or POST"}
            )
            return
        principal = scope["dpop"]
        await _json(
            send,
            200,
            {
                "sub": principal.sub,
                "client_id": principal.client_id,
                "scope": " ".join(sorted(principal.scopes)),
                "jkt": principal.jkt,
            },
        )

    return app


def create_whoami_app(
    *,
    issuer: str,
    public_origin: str,
    audience: str | Sequence[str] | None = None,
    tokens: AsyncTokenValidator | TokenValidator | None = None,
    replay: AsyncReplayCache | None = None,
    require_nonce: bool = False,
    nonce_secret: bytes | None = None,
    policy: ProofPolicy | None = None,
    allow_insecure_http: bool = False,
    path: str = WHOAMI_PATH,
) -> DPoPMiddleware:
    """Build the demo protected API (RFC 9449 §7; RFC 9728 metadata included).

    Args:
        issuer: the authorization server whose tokens are accepted (discovery starts here).
        public_origin: the origin clients use (``htu`` = origin + path).
        audience: the expected ``aud``; ``public_origin`` by default.
        tokens: a validator to use instead of discovery (e.g. the AS's own keys).
        replay: the replay cache; an in-memory one (one process) by default.
        require_nonce: demand RS nonces (RFC 9449 §9).
        nonce_secret: the nonce secret (share it between instances); random by default.
        policy: the proof policy (``require_nonce`` is taken from the argument).
        allow_insecure_http: accept an ``http://`` issuer (loopback demos and tests).
        path: where the whoami endpoint lives.

    Returns:
        The ASGI app. ``GET /metrics`` answers the guard's counters (Prometheus text)
        without authentication.
    """
    validator: Any = tokens
    if validator is None:
        validator = AsyncJWTAccessTokens(
            issuer=issuer,
            audience=audience if audience is not None else public_origin,
            allow_insecure_http=allow_insecure_http,
        )
    base = policy if policy is not None else ProofPolicy()
    if require_nonce != base.require_nonce:
        fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
        base = ProofPolicy(**{**fields, "require_nonce": require_nonce})
    nonces = None
    if require_nonce:
        secret = nonce_secret if nonce_secret is not None else secrets.token_bytes(32)
        nonces = NonceIssuer([secret], context=f"rs:{public_origin}")
    metrics = GuardMetrics()
    guard = AsyncResourceGuard(
        tokens=validator,
        replay=replay if replay is not None else AsyncMemoryReplayCache(single_process=True),
        policy=base,
        nonces=nonces,
        metrics=metrics,
    )
    metadata = ProtectedResourceMetadata(
        resource=public_origin, authorization_servers=[issuer], resource_name="dpopkit whoami"
    )
    return DPoPMiddleware(
        _whoami_endpoint(metrics, path),
        guard=guard,
        public_origin=public_origin,
        exclude_paths=["/metrics"],
        metadata=metadata,
    )
