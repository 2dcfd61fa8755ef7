"""Run an ASGI app under uvicorn for ``serve`` and ``serve-api``: bind first, then log.

The listening socket is bound **before** anything is printed, so a port in use is one
line (``dpopkit serve: error: cannot listen on ...``, exit :data:`EXIT_CANNOT_LISTEN`)
and never a banner followed by uvicorn's own error. Both commands share the logging
flags: ``--log-level`` (uvicorn's and dpopkit's loggers) and ``--access-log``, and take
``X-Forwarded-For`` into account only from the proxies ``FORWARDED_ALLOW_IPS`` names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from dpopkit.cli import CommandError

__all__ = [
    "EXIT_CANNOT_LISTEN",
    "LOG_LEVELS",
    "add_logging_flags",
    "bind",
    "run_uvicorn",
    "worker_args",
]

#: Exit status when the address cannot be bound (in use, not local, no permission).
EXIT_CANNOT_LISTEN = 3
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# How the parent hands its command-line arguments to ``--workers`` processes (plain values:
# variable names of secrets travel, never the secrets themselves).
_WORKER_ARGS = "DPOPKIT_WORKER_ARGS"


def worker_args() -> dict[str, Any]:
    """The arguments ``run_uvicorn`` handed to this worker process (``factory_args``)."""
    args: dict[str, Any] = json.loads(os.environ[_WORKER_ARGS])
    return args


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--access-log``, the same on every serving command."""
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="log level of the server and of dpopkit's loggers (default info)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per HTTP request (method, path, status; never headers)",
    )


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, or a :class:`CommandError` saying why not."""
    if not 0 <= port < 65536:
        raise CommandError("--port must be between 0 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a response written in two parts waits for the peer's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        reason = exc.strerror or str(exc)
        raise CommandError(
            f"cannot listen on {shown}:{port}: {reason}", EXIT_CANNOT_LISTEN
        ) from None
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def configure_logging(level: str) -> None:
    """dpopkit's loggers at ``level``, on stderr, in uvicorn's format."""
    logger = logging.getLogger("dpopkit")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def run_uvicorn(
    app: Any,
    *,
    sock: socket.socket,
    log_level: str,
    access_log: bool,
    workers: int = 1,
    factory: str | None = None,
    factory_args: Mapping[str, Any] | None = None,
) -> None:
    """Serve ``app`` on ``sock``; with several workers, each builds its own from the import
    string ``factory``, which reads ``factory_args`` with :func:`worker_args`."""
    import uvicorn

    configure_logging(log_level)
    common: dict[str, Any] = {
        "log_level": log_level,
        "access_log": access_log,
        # The client address is the TCP peer unless FORWARDED_ALLOW_IPS names the proxies
        # whose X-Forwarded-For uvicorn may believe (uvicorn alone trusts 127.0.0.1).
        "proxy_headers": bool(os.environ.get("FORWARDED_ALLOW_IPS")),
    }
    try:
        if workers > 1:
            if factory is None:
                raise ValueError("several workers need an import string for the app factory")
            os.environ[_WORKER_ARGS] = json.dumps(dict(factory_args or {}))
            # The workers get ``sock`` itself: uvicorn's ``fd=`` would rebuild it as an
            # AF_UNIX socket object, on which asyncio never sets TCP_NODELAY.
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config(factory, factory=True, workers=workers, **common)
            try:
                supervisor = Multiprocess(config, sockets=[sock])
            except TypeError:  # older uvicorn releases also want the target
                supervisor = Multiprocess(  # type: ignore[call-arg]
                    config, target=uvicorn.Server(config).run, sockets=[sock]
                )
            supervisor.run()
        else:
            uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
    finally:
        sock.close()
