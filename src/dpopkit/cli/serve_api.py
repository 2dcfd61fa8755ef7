"""``dpopkit serve-api``: a small DPoP-protected API for trying clients and interop tests.

``GET``/``POST /api/whoami`` answers the principal (sub, client_id, scope, jkt)
as JSON, guarded by the ASGI middleware; JWT access tokens of any issuer are
validated with keys found by RFC 8414 / OpenID Connect discovery.

``--workers N`` runs N uvicorn worker processes on one socket; they must share the
replay store (``--replay`` other than memory) and, with ``--require-nonce``, the
nonce secrets (``--nonce-secret-env``): otherwise the command exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
from typing import Any

from dpopkit.cli import (
    CommandError,
    add_insecure_http_flag,
    add_nonce_secret_flag,
    missing_extra,
    nonce_secrets_from_env,
)
from dpopkit.cli._serving import add_logging_flags, bind, run_uvicorn, worker_args
from dpopkit.core.replay import AsyncReplayCache
from dpopkit.storage.urls import REPLAY_URL_FORMS, async_replay_cache_from_url, parse_replay_url

__all__ = ["register", "worker_app"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--replay",
        metavar="URL",
        help="replay store URL, as serve's replay_url: memory (default, one process), "
        "sqlite:///PATH, redis://, rediss://, unix:// or postgresql://",
    )
    parser.add_argument(
        "--replay-prefix", default="", help="key prefix in a Redis replay store (default none)"
    )
    parser.add_argument(
        "--replay-schema", metavar="SCHEMA", help="schema of a PostgreSQL replay store's table"
    )
    parser.add_argument(
        "--store-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds per replay store call, Redis and PostgreSQL (default 2)",
    )
    add_nonce_secret_flag(parser, "RS nonce secrets shared by every instance (default: random)")
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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (needs a shared --replay store, and "
        "--nonce-secret-env with --require-nonce)",
    )
    add_logging_flags(parser)
    parser.set_defaults(func=run)


#: The options a worker process rebuilds the app from (``--workers``): names of
#: environment variables travel, never the secrets they hold.
_SPEC = (
    "issuer",
    "audience",
    "host",
    "port",
    "public_origin",
    "require_nonce",
    "replay",
    "replay_prefix",
    "replay_schema",
    "store_timeout",
    "nonce_secret_env",
    "metrics",
    "metrics_allow",
    "allow_insecure_http",
)


def _replay(args: argparse.Namespace) -> AsyncReplayCache | None:
    """The replay cache ``--replay`` names (as ``serve``'s ``replay_url``), or None."""
    timeout = args.store_timeout
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= 60):
        raise CommandError("--store-timeout must be a number of seconds in (0, 60]")
    if args.replay is None:
        if args.replay_prefix or args.replay_schema is not None:
            raise CommandError("--replay-prefix and --replay-schema need --replay")
        return None
    if args.replay == "sqlite":
        raise CommandError("--replay sqlite needs a file: give sqlite:///PATH")
    try:
        parsed = parse_replay_url(args.replay)
    except ValueError:
        raise CommandError(f"--replay takes {REPLAY_URL_FORMS}") from None
    if args.replay_prefix and parsed.backend != "redis":
        raise CommandError("--replay-prefix applies to a redis://, rediss:// or unix:// --replay")
    if args.replay_schema is not None and parsed.backend != "postgres":
        raise CommandError("--replay-schema applies to a postgresql:// --replay")
    try:
        return async_replay_cache_from_url(
            args.replay,
            timeout=timeout,
            schema=args.replay_schema or None,
            prefix=args.replay_prefix,
        )
    except ImportError as exc:
        extra = "redis" if parsed.backend == "redis" else "postgres"
        raise missing_extra(extra, exc) from exc
    except ValueError as exc:
        raise CommandError(f"--replay: {exc}") from None


def _origin(args: argparse.Namespace) -> str:
    return str(args.public_origin or f"http://{args.host}:{args.port}")


def _app(args: argparse.Namespace) -> tuple[AsyncReplayCache | None, Any]:
    """The replay cache and the whoami app the options describe (parent and workers)."""
    from dpopkit.demo.api import create_whoami_app

    replay = _replay(args)
    try:
        return replay, create_whoami_app(
            issuer=args.issuer,
            public_origin=_origin(args),
            audience=args.audience,
            replay=replay,
            require_nonce=args.require_nonce,
            nonce_secrets=nonce_secrets_from_env(args.nonce_secret_env) or (),
            allow_insecure_http=args.allow_insecure_http,
            metrics=args.metrics,
            metrics_allow=args.metrics_allow,
        )
    except ValueError as exc:
        _close(replay)
        raise CommandError(str(exc)) from None


def _close(replay: AsyncReplayCache | None) -> None:
    """Release the connections ``replay`` holds (outside any event loop)."""
    aclose = getattr(replay, "aclose", None)
    if callable(aclose):
        asyncio.run(aclose())
        return
    close = getattr(replay, "close", None)
    if callable(close):
        close()


def worker_app() -> Any:
    """The app of one uvicorn worker process (``--workers N``), built from the parent's args."""
    return _app(argparse.Namespace(**worker_args()))[1]


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - fail here, before anything is built

        import dpopkit.demo.api  # noqa: F401 - the server extra
    except ImportError as exc:
        raise missing_extra("server", exc) from exc
    if not 0 < args.port < 65536:
        raise CommandError("--port must be between 1 and 65535")
    origin = _origin(args)
    insecure = not origin.startswith("https://") and not args.allow_insecure_http
    if insecure and args.public_origin is not None:
        raise CommandError("--public-origin must be https (or pass --allow-insecure-http)")
    if args.metrics_allow and not args.metrics:
        raise CommandError("--metrics-allow needs --metrics")
    for cidr in args.metrics_allow or ():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise CommandError(f"--metrics-allow {cidr!r}: not an IP network (CIDR)") from None
    scheme = args.issuer.partition("://")[0].lower()
    if not (scheme == "https" or (scheme == "http" and args.allow_insecure_http)):
        raise CommandError(
            "--issuer must be an https URL (or pass --allow-insecure-http for a loopback AS)"
        )
    if args.workers < 1:
        raise CommandError("--workers must be >= 1")
    if args.workers > 1 and args.replay in (None, "memory"):
        # RFC 9449 §11.1: a proof is accepted once across every process.
        raise CommandError("--workers > 1 needs a shared --replay store (memory is per process)")
    if args.workers > 1 and args.require_nonce and not args.nonce_secret_env:
        raise CommandError("--workers > 1 with --require-nonce needs shared --nonce-secret-env")
    # Built once here even with workers: every option is checked before a worker starts.
    replay, app = _app(args)
    if args.workers > 1:
        # Each worker builds its own app; the parent serves nothing and keeps no client.
        _close(replay)
        app = None
    sock = bind(args.host, args.port)  # before the banner: a port in use is one line
    print(f"dpopkit serve-api: {origin}/api/whoami (tokens from {args.issuer})", flush=True)
    run_uvicorn(
        app,
        sock=sock,
        log_level=args.log_level,
        access_log=args.access_log,
        workers=args.workers,
        factory="dpopkit.cli.serve_api:worker_app",
        factory_args={name: getattr(args, name) for name in _SPEC},
    )
    return 0
