"""A one-shot loopback listener for a native app's authorization callback (RFC 8252 §7.3)."""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit


class LoopbackListener:
    """A one-shot HTTP listener on 127.0.0.1 for the authorization callback (RFC 8252 §7.3)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.callback: str | None = None
        self._done = threading.Event()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urlsplit(self.path).path != listener.path or listener._done.is_set():
                    self.send_error(404)
                    return
                listener.callback = f"{listener.redirect_uri.split('?')[0]}?" + (
                    urlsplit(self.path).query
                )
                page = html.escape("You can close this window and return to the application.")
                body = f"<!doctype html><title>dpopkit</title><p>{page}</p>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
                listener._done.set()

            def log_message(self, format: str, *args: Any) -> None:
                return None  # never log: the query holds the authorization code

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def expect(self) -> None:
        """Forget an earlier callback: the next one is awaited (a second authorization)."""
        self.callback = None
        self._done.clear()

    def wait(self, timeout: float) -> str:
        if not self._done.wait(timeout) or self.callback is None:
            raise TimeoutError("no authorization callback arrived")
        return self.callback
