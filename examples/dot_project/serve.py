"""Serve django-oauth-toolkit with dpopkit's DPoP plug-in, configured by dpopkit's TOML.

Usage::

    python examples/dot_project/serve.py --config FILE --host 127.0.0.1 --port 8000

FILE is the file ``dpopkit serve --config`` reads: ``issuer``, ``[[clients]]`` (RFC 7591
names, including ``dpop_bound_access_tokens``), ``[[users]]``, ``[dpop] nonce``,
``test_mode_user`` (loopback only), ``storage_url`` (SQLite or PostgreSQL, here DOT's
own database) and ``replay_url``. The command migrates the database, writes the
clients and users into DOT's tables, and serves until interrupted. The Django
settings are ``settings.py`` beside this file.
"""

from __future__ import annotations

import argparse
import os
import socketserver
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HERE = Path(__file__).resolve().parent


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.command} {self.path.split('?')[0]} {args[1]}\n")


def _not_ready(environ: object, start_response: object) -> list[bytes]:
    raise RuntimeError("not ready")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, migrate, provision and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="dpopkit's TOML file")
    parser.add_argument("--host", default=None, help="address to listen on (loopback)")
    parser.add_argument("--port", default=None, type=int, help="port (0: any free one)")
    args = parser.parse_args(argv)

    from dpopkit.server.app import is_loopback_host
    from dpopkit.server.config import ConfigError, load_config

    try:
        first = load_config(args.config, host=args.host, port=args.port, create=False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "test_mode_user" in first.settings and not is_loopback_host(first.host):
        print(
            "error: test_mode_user: test mode listens on a loopback address only", file=sys.stderr
        )
        return 2
    server = make_server(
        first.host, first.port, _not_ready, server_class=_Server, handler_class=_QuietHandler
    )
    port = server.server_address[1]
    os.environ["DPOPKIT_DOT_CONFIG"] = str(args.config.resolve())
    os.environ["DPOPKIT_DOT_HOST"] = first.host
    os.environ["DPOPKIT_DOT_PORT"] = str(port)
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
    sys.path.insert(0, str(HERE))

    import django  # type: ignore[import-untyped]

    django.setup()
    import provision
    from django.core.management import call_command  # type: ignore[import-untyped]
    from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]

    call_command("migrate", verbosity=0, interactive=False)
    try:
        for note in provision.sync():
            print(note, file=sys.stderr)
    except provision.ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.set_app(get_wsgi_application())
    from django.conf import settings  # type: ignore[import-untyped]

    print(f"django-oauth-toolkit with DPoP at {settings.DPOPKIT_DOT['PUBLIC_URL']}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
