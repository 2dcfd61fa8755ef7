"""Senders: the HTTP exchange of the token client, ``(RequestView) -> ResponseView``.

The token client (:mod:`dpopkit.client.tokens`) and discovery
(:mod:`dpopkit.client.metadata`) send through a sender: by default
:func:`urllib_sender` (the standard library, no extra dependency, redirects not
followed); :func:`dpopkit.client.httpx.httpx_sender` plugs in an ``httpx.Client``.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from dpopkit.core.http import RequestView, ResponseView

__all__ = ["MAX_RESPONSE_BODY", "Sender", "urllib_sender"]

Sender = Callable[[RequestView], ResponseView]

#: Largest response body (bytes) the token client reads.
MAX_RESPONSE_BODY = 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def urllib_sender(*, timeout: float = 10.0) -> Sender:
    """A sender on the standard library (``urllib``); redirects are not followed.

    Error statuses are returned as responses, not raised. Bodies over
    :data:`MAX_RESPONSE_BODY` bytes are cut. A server that cannot be reached, or
    answers with something that is not HTTP, raises :class:`OSError`.
    """
    opener = urllib.request.build_opener(_NoRedirect)

    def send(request: RequestView) -> ResponseView:
        if not request.url.lower().startswith(("https://", "http://")):
            raise ValueError("only http(s) URLs")
        req = urllib.request.Request(  # noqa: S310 - scheme checked above
            request.url,
            data=request.body,
            method=request.method,
            headers=dict(request.headers.items_all()),
        )
        try:
            with opener.open(req, timeout=timeout) as resp:
                return ResponseView(
                    status=resp.status,
                    headers=tuple(resp.headers.items()),
                    body=resp.read(MAX_RESPONSE_BODY),
                )
        except urllib.error.HTTPError as err:
            with err:
                return ResponseView(
                    status=err.code,
                    headers=tuple(err.headers.items()),
                    body=err.read(MAX_RESPONSE_BODY),
                )
        except http.client.HTTPException as exc:  # a reply that is not HTTP/1.x
            raise ConnectionError(f"not an HTTP response ({type(exc).__name__})") from exc

    return send
