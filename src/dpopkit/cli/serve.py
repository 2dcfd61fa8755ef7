"""``dpopkit serve``: run the authorization server (and the demo protected API) under uvicorn.

Without ``--config`` it starts a demo AS on 127.0.0.1 with a demo client and
user (printed at start), keeping its database, signing keys and secrets in
``--data-dir`` (created 0700, its files 0600). A bad configuration, or key material
that group or others can read, prints one line and exits 2. ``--check`` writes
nothing and exits 1 when a configured store does not answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpopkit.cli import (
    CommandError,
    add_nonce_secret_flag,
    missing_extra,
    nonce_secrets_from_env,
)
from dpopkit.cli._serving import add_logging_flags, bind, run_uvicorn, worker_args

__all__ = ["register", "whoami_mounts", "worker_app"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the authorization server (demo defaults without --config)",
        description="Run the dpopkit authorization server under uvicorn.",
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="database, keys and secrets directory")
    parser.add_argument(
        "--no-api", action="store_true", help="do not mount the demo API at /api/whoami"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (needs a shared replay cache: sqlite or redis)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration and reach every store, writing nothing; "
        "exit 1 when a store does not answer, 2 when the configuration is invalid",
    )
    add_nonce_secret_flag(
        parser, "AS nonce secrets (default: [dpop] nonce_secrets, else one kept in --data-dir)"
    )
    add_logging_flags(parser)
    parser.set_defaults(func=run)


def whoami_mounts(
    service: Any,
    issuer: str,
    data_dir: Path | None = None,
    *,
    cors_origins: Sequence[str] = (),
) -> list[tuple[str, Any]]:
    """The demo protected API, validating this AS's tokens against its own store.

    With ``data_dir`` its replay cache is a SQLite file there (shared by workers).
    With ``cors_origins`` browsers on those origins may call it, and its scripts may
    read ``DPoP-Nonce`` and ``WWW-Authenticate`` (RFC 9449 §9).
    """
    try:
        from dpopkit.demo.api import WHOAMI_PATH, create_whoami_app
        from dpopkit.resource.tokens import TokenInfo
    except ImportError:
        return []
    from starlette.concurrency import run_in_threadpool

    from dpopkit.errors import InvalidTokenError, Reason

    class _OwnTokens:
        """Accept live tokens of this AS (JWT or opaque) whose audience is the issuer."""

        async def validate(self, token: str, *, now: float) -> TokenInfo:
            record = await run_in_threadpool(service.lookup_access_token, token, now=now)
            if record is None or issuer not in record.aud:
                raise InvalidTokenError(Reason.TOKEN_INVALID, "invalid access token")
            claims: dict[str, Any] = {
                "iss": issuer,
                "sub": record.sub,
                "aud": list(record.aud),
                "client_id": record.client_id,
                "scope": record.scope,
                "iat": int(record.issued_at),
                "exp": int(record.expires_at),
            }
            if not record.opaque:
                claims["jti"] = record.jti  # an opaque token's key is its hash: not shown
            if record.jkt:
                claims["cnf"] = {"jkt": record.jkt}
            return TokenInfo(
                claims=claims,
                jkt=record.jkt,
                scopes=frozenset(record.scope.split()),
                sub=record.sub,
                client_id=record.client_id,
                exp=record.expires_at,
            )

    replay: Any = None
    if data_dir is not None:
        from dpopkit.storage.sqlite import AsyncSQLiteReplayCache

        replay = AsyncSQLiteReplayCache(data_dir / "rs-replay.db")
    app: Any = create_whoami_app(
        issuer=issuer,
        public_origin=issuer,
        tokens=_OwnTokens(),
        replay=replay,
        allow_insecure_http=issuer.startswith("http:"),
    )
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(
            app,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "DPoP", "Content-Type"],
            expose_headers=["DPoP-Nonce", "WWW-Authenticate"],
            max_age=600,
        )
    return [(WHOAMI_PATH, app), ("/.well-known/oauth-protected-resource", app)]


def _load(args: dict[str, Any], *, create: bool = True) -> Any:
    from dpopkit.server.config import load_config

    path = args["config"]
    return load_config(
        None if path is None else Path(path),
        host=args["host"],
        port=args["port"],
        data_dir=None if args["data_dir"] is None else Path(args["data_dir"]),
        now=time.time(),
        # Variable names travel to --workers processes, never the secrets themselves.
        nonce_secrets=nonce_secrets_from_env(args.get("nonce_secret_env")),
        create=create,
    )


def _build(args: dict[str, Any]) -> tuple[Any, Any, Any]:
    from dpopkit.server.config import build_server

    config = _load(args)
    from dpopkit.server.spa import spa_mounts

    def mounts(svc: Any) -> list[tuple[str, Any]]:
        # The browser client at /app/ (dpopkit.server.spa), and the demo API unless --no-api.
        if args["no_api"]:
            return spa_mounts()
        api = whoami_mounts(svc, config.issuer, config.data_dir, cors_origins=config.cors_origins)
        return [*spa_mounts(), *api]

    app, service = build_server(config, mounts=mounts)
    return config, app, service


def worker_app() -> Any:
    """The app of one uvicorn worker process (``--workers N``), built from the parent's args."""
    return _build(worker_args())[1]


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - fail here, before anything is built

        from dpopkit.server.config import (
            BackendUnavailableError,
            ConfigError,
            check_backends,
            describe,
        )
    except ImportError as exc:
        raise missing_extra("server", exc) from None
    spec = {
        "config": None if args.config is None else str(args.config.resolve()),
        "host": args.host,
        "port": args.port,
        "data_dir": None if args.data_dir is None else str(args.data_dir.resolve()),
        "no_api": args.no_api,
        "nonce_secret_env": args.nonce_secret_env,
    }
    if args.config is not None:
        try:
            args.config.open("rb").close()
        except OSError as exc:
            raise CommandError(f"--config {args.config}: cannot read: {exc.strerror}") from None
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        raise CommandError(f"--data-dir {args.data_dir}: not a directory")
    if args.port is not None and not 0 <= args.port < 65536:
        raise CommandError("--port must be between 0 and 65535")
    if args.workers < 1:
        raise CommandError("--workers must be >= 1", 2)
    if args.check:
        # Validate and reach every store without creating or changing anything on disk.
        try:
            checked = _load(spec, create=False)
            check_backends(checked)
        except ConfigError as exc:
            raise CommandError(str(exc), 2) from None
        except BackendUnavailableError as exc:
            raise CommandError(str(exc), 1) from None
        if args.workers > 1 and checked.replay_url == "memory":
            raise CommandError("replay_url = memory cannot be shared by several workers", 2)
        print(describe(checked))
        return 0
    try:
        # Built once here even with workers: it validates everything and creates the
        # schema, the signing key and the secrets before any worker starts.
        config, app, service = _build(spec)
    except ConfigError as exc:
        raise CommandError(str(exc), 2) from None
    if args.workers > 1:
        service.close()  # each worker builds its own; this one only validated and prepared
        if config.replay_url == "memory":
            raise CommandError("replay_url = memory cannot be shared by several workers", 2)
    sock = bind(config.host, config.port)  # before the banner: a port in use is one line
    for line in config.demo_notes:
        print(line, file=sys.stderr)
    print(f"dpopkit AS: issuer {config.issuer}", file=sys.stderr)
    if service.settings.test_mode_user is not None:
        print(
            f"TEST MODE: /authorize logs in {service.settings.test_mode_user!r} without a password",
            file=sys.stderr,
        )
    run_uvicorn(
        app,
        sock=sock,
        log_level=args.log_level,
        access_log=args.access_log,
        workers=args.workers,
        factory="dpopkit.cli.serve:worker_app",
        factory_args=spec,
    )
    return 0
