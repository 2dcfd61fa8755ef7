"""The demo's servers: dpopkit's authorization server and the whoami API on loopback ports.

Each runs under uvicorn in a thread of this process, on a socket bound before it
starts, so :func:`demo_servers` can hand out their URLs at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpopkit.demo.api import WHOAMI_PATH, create_whoami_app
from dpopkit.demo.report import DEMO_USER, DemoTarget
from dpopkit.errors import requires_extra
from dpopkit.server.config import build_server, load_config

with requires_extra("server", needed_by=__name__):
    import uvicorn

__all__ = ["demo_servers"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def _bind() -> socket.socket:
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections (see cli._serving).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def _serve(app: Any, sock: socket.socket) -> Iterator[None]:
    """Serve ``app`` under uvicorn in a thread on a bound socket; stop it on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="dpopkit-demo", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        sock.close()


@contextmanager
def demo_servers(data_dir: Path, *, require_nonces: bool = True) -> Iterator[DemoTarget]:
    """Run the authorization server and the protected API on free loopback ports.

    The AS uses ``dpopkit serve``'s demo defaults (its clients and user, SQLite in
    ``data_dir``), requires a server nonce on every proof (RFC 9449 §8,
    ``nonce_policy = "always"``) and logs the demo user in without a password (test
    mode, loopback only). The API is :func:`~dpopkit.demo.api.create_whoami_app`
    on its own port: it finds the AS's keys by discovery and accepts tokens whose
    audience is its origin.

    Args:
        data_dir: where the AS keeps its database, keys and secrets.
        require_nonces: demand a server nonce in every proof at the AS (``always``);
            False leaves the demo defaults (``off``), so the story's token step fails.

    Yields:
        The :class:`DemoTarget` to give :func:`~dpopkit.demo.story.run_story`.

    Raises:
        dpopkit.server.config.ConfigError: the AS cannot be set up.
        RuntimeError: a server did not start within 10 seconds.
    """
    with ExitStack() as stack:
        as_sock = _bind()
        stack.callback(as_sock.close)
        api_sock = _bind()
        stack.callback(api_sock.close)
        config = load_config(
            None,
            host="127.0.0.1",
            port=as_sock.getsockname()[1],
            data_dir=data_dir,
            now=time.time(),
        )
        settings = {**config.settings, "test_mode_user": DEMO_USER}
        if require_nonces:
            settings["nonce_policy"] = "always"
        config = replace(config, settings=settings)
        as_app, service = build_server(config)
        stack.callback(service.close)
        api_origin = f"http://127.0.0.1:{api_sock.getsockname()[1]}"
        api_app = create_whoami_app(
            issuer=config.issuer, public_origin=api_origin, allow_insecure_http=True
        )
        stack.enter_context(_serve(as_app, as_sock))
        stack.enter_context(_serve(api_app, api_sock))
        yield DemoTarget(issuer=config.issuer, api_url=api_origin + WHOAMI_PATH)
