"""The demo protected API: ``GET``/``POST /api/whoami`` answers the principal as JSON.

``dpopkit serve-api`` runs it under uvicorn; ``dpopkit serve`` mounts it next to
the authorization server. It is a plain ASGI app (no framework) behind
:class:`~dpopkit.resource.asgi.DPoPMiddleware`, validating RFC 9068 JWT access
tokens of any issuer found by discovery (or any validator passed in).

``GET /metrics`` (the guard's counters, Prometheus text) is off unless asked for,
and then answered only to peers in an allow-list, loopback by default, and never
to a request that came through a proxy: counters by rejection reason tell an
attacker which of their attempts come close. Keycloak and Duende keep metrics on a
management interface for the same reason.
"""

from __future__ import annotations

import ipaddress
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
from dpopkit.resource.jwt_tokens import AsyncJWTAccessTokens
from dpopkit.resource.validation import AsyncTokenValidator, TokenValidator
from dpopkit.storage.memory import AsyncMemoryReplayCache

__all__ = ["LOOPBACK_NETWORKS", "METRICS_PATH", "WHOAMI_PATH", "create_whoami_app"]

WHOAMI_PATH = "/api/whoami"
METRICS_PATH = "/metrics"
#: Who may read ``/metrics`` when no allow-list is given.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
#: A request carrying any of these came through a proxy: its peer address is the proxy's.
_FORWARDING_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Parse the metrics allow-list.

    Raises:
        ValueError: an entry is not an IP network in CIDR notation.
    """
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"metrics allow-list: not an IP network (CIDR): {cidr!r}") from None
    return tuple(networks)


def _metrics_allowed(scope: Scope, allowed: tuple[Network, ...]) -> bool:
    """Whether the peer may read the metrics: a direct connection from an allowed address."""
    if any(name.lower() in _FORWARDING_HEADERS for name, _ in scope.get("headers", ())):
        return False
    client = scope.get("client")
    if not client:
        return False  # a Unix socket or an unknown peer
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


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


def _whoami_endpoint(
    metrics: GuardMetrics, path: str, metrics_allowed: tuple[Network, ...] | None
) -> ASGIApp:
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
        if metrics_allowed is not None and route == METRICS_PATH and scope["method"] == "GET":
            if not _metrics_allowed(scope, metrics_allowed):
                await _json(send, 403, {"error": "forbidden"})
                return
            data = metrics.prometheus_text().encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain; version=0.0.4"),
                        (b"cache-control", b"no-store"),
                    ],
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
    nonce_secret: bytes | str | None = None,
    nonce_secrets: Sequence[bytes | str] = (),
    policy: ProofPolicy | None = None,
    allow_insecure_http: bool = False,
    path: str = WHOAMI_PATH,
    metrics: bool = False,
    metrics_allow: Sequence[str] | None = None,
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
            A ``str`` is the text form: base64url of >= 32 bytes (``parse_nonce_secret``).
        nonce_secrets: several secrets for rotation, newest first: the first signs, all
            verify (used instead of ``nonce_secret`` when given).
        policy: the proof policy (``require_nonce`` is taken from the argument).
        allow_insecure_http: accept an ``http://`` issuer (loopback demos and tests).
        path: where the whoami endpoint lives.
        metrics: serve ``GET /metrics`` (the guard's counters, Prometheus text, no DPoP).
        metrics_allow: networks (CIDR) whose peers may read it, replacing the default
            :data:`LOOPBACK_NETWORKS`; requests with forwarding headers are always refused.

    Returns:
        The ASGI app.

    Raises:
        ValueError: ``metrics_allow`` without ``metrics``, or an entry that is not a CIDR.
    """
    if metrics_allow is not None and not metrics:
        raise ValueError("metrics_allow needs metrics=True")
    allowed = _networks(LOOPBACK_NETWORKS if metrics_allow is None else metrics_allow)
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
        keys: Sequence[bytes | str] = nonce_secrets or [
            nonce_secret if nonce_secret is not None else secrets.token_bytes(32)
        ]
        nonces = NonceIssuer(keys, context=f"rs:{public_origin}")
    counters = GuardMetrics()
    guard = AsyncResourceGuard(
        tokens=validator,
        replay=replay if replay is not None else AsyncMemoryReplayCache(single_process=True),
        policy=base,
        nonces=nonces,
        metrics=counters,
    )
    metadata = ProtectedResourceMetadata(
        resource=public_origin, authorization_servers=[issuer], resource_name="dpopkit whoami"
    )
    return DPoPMiddleware(
        _whoami_endpoint(counters, path, allowed if metrics else None),
        guard=guard,
        public_origin=public_origin,
        exclude_paths=[METRICS_PATH] if metrics else [],
        metadata=metadata,
    )
