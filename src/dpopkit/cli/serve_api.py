"""``dpopkit serve-api``: a small DPoP-protected API for trying clients and interop tests.

``GET``/``POST /api/whoami`` answers the principal (sub, client_id, scope, jkt)
as JSON, guarded by the ASGI middleware; JWT access tokens of any issuer are
validated with keys found by RFC 8414 / OpenID Connect discovery.
"""

from __future__ import annotations

import argparse
from typing import Any

from dpopkit.cli import CommandError, add_insecure_http_flag, missing_extra, secret_from_env

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-api",
        help="run a DPoP-protected demo API (/api/whoami)",
        description=(
            "Serve GET/POST /api/whoami behind the DPoP resource-server middleware,"
            " accepting RFC 9068 JWT access tokens from --issuer (keys by discovery)."
        ),
    )
    parser.add_argument("--issuer", required=True, help="the authorization server's issuer URL")
    parser.add_argument("--audience", help="expected aud (default: the public origin)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="listen port (default 8001)")
    parser.add_argument(
        "--public-origin", help="origin clients use, e.g. https://api.example (default: listen)"
    )
    parser.add_argument("--require-nonce", action="store_true", help="demand RS nonces")
    parser.add_argument(
        "--replay", help="replay store URL: redis://... (default: in memory, one process)"
    )
    parser.add_argument("--replay-prefix", default="", help="key prefix in the replay store")
    parser.add_argument(
        "--nonce-secret-env",
        help="name of an environment variable holding the nonce secret (hex, >= 32 bytes)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="serve GET /metrics (Prometheus text) to loopback peers (default: not served)",
    )
    parser.add_argument(
        "--metrics-allow",
        action="append",
        metavar="CIDR",
        help="a network whose peers may read /metrics instead of loopback (repeatable;"
        " needs --metrics; proxied requests are always refused)",
    )
    add_insecure_http_flag(parser, "accept an http:// issuer (loopback demos and tests only)")
    parser.set_defaults(func=run)


def _nonce_secret(name: str | None) -> bytes | None:
    value = secret_from_env(name, "nonce secret")
    if value is None:
        return None
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise CommandError(f"{name} must hold hex") from None
    if len(secret) < 32:
        raise CommandError(f"{name} must hold at least 32 bytes")
    return secret


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from dpopkit.resource.demo import create_whoami_app
    except ImportError as exc:
        raise missing_extra("server", exc) from exc
    if not 0 < args.port < 65536:
        raise CommandError("--port must be between 1 and 65535")
    origin = args.public_origin or f"http://{args.host}:{args.port}"
    insecure = not origin.startswith("https://") and not args.allow_insecure_http
    if insecure and args.public_origin is not None:
        raise CommandError("--public-origin must be https (or pass --allow-insecure-http)")
    if args.metrics_allow and not args.metrics:
        raise CommandError("--metrics-allow needs --metrics")
    replay: Any = None
    if args.replay:
        if not args.replay.startswith(("redis://", "rediss://", "unix://")):
            raise CommandError("--replay takes a redis:// URL")
        try:
            from dpopkit.storage.redis import AsyncRedisReplayCache
        except ImportError as exc:
            raise missing_extra("redis", exc) from exc
        replay = AsyncRedisReplayCache.from_url(args.replay, prefix=args.replay_prefix)
    try:
        app = create_whoami_app(
            issuer=args.issuer,
            public_origin=origin,
            audience=args.audience,
            replay=replay,
            require_nonce=args.require_nonce,
            nonce_secret=_nonce_secret(args.nonce_secret_env),
            allow_insecure_http=args.allow_insecure_http,
            metrics=args.metrics,
            metrics_allow=args.metrics_allow,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"dpopkit serve-api: {origin}/api/whoami (tokens from {args.issuer})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    return 0
