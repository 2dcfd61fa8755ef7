"""Senders: the HTTP exchange of the token client, ``(RequestView) -> ResponseView``.

The token client (:mod:`dpopkit.client.tokens`) and discovery
(:mod:`dpopkit.client.metadata`) send through a sender: by default
:func:`urllib_sender` (the standard library, no extra dependency, redirects not
followed); :func:`dpopkit.client.httpx.httpx_sender` plugs in an ``httpx.Client``.

The exchanges themselves are written once, sans I/O, as *steps*: generators that
yield the :class:`RequestView` to send and receive its :class:`ResponseView`.
:func:`run_steps` drives them with a blocking :data:`Sender`, :func:`arun_steps` with
an :data:`AsyncSender` (``await sender(request)``), so the synchronous and the
asynchronous token clients build every request and check every answer with the
same code.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from dpopkit.core.http import RequestView, ResponseView

__all__ = [
    "MAX_RESPONSE_BODY",
    "AsyncSender",
    "Sender",
    "Steps",
    "arun_steps",
    "run_steps",
    "threaded_urllib_sender",
    "urllib_sender",
]

_T = TypeVar("_T")

Sender = Callable[[RequestView], ResponseView]
#: An asynchronous sender: ``await sender(request)`` gives the response.
AsyncSender = Callable[[RequestView], Awaitable[ResponseView]]
#: A sans-I/O exchange: yields each request, is sent its response, returns the result.
Steps = Generator[RequestView, ResponseView, _T]


def run_steps(steps: Steps[_T], sender: Sender) -> _T:
    """Drive ``steps`` with a blocking sender and return their result."""
    try:
        request = next(steps)
        while True:
            request = steps.send(sender(request))
    except StopIteration as done:
        result: _T = done.value
        return result


async def arun_steps(steps: Steps[_T], sender: AsyncSender) -> _T:
    """Drive ``steps`` with an asynchronous sender and return their result."""
    try:
        request = next(steps)
        while True:
            request = steps.send(await sender(request))
    except StopIteration as done:
        result: _T = done.value
        return result


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


def threaded_urllib_sender(*, timeout: float = 10.0) -> AsyncSender:
    """:func:`urllib_sender` run in a worker thread (``asyncio.to_thread``): never blocks the loop.

    The default of :class:`~dpopkit.client.tokens.AsyncTokenClient` under asyncio; under
    trio, or to share a connection pool, pass an async sender such as
    :func:`dpopkit.client.httpx.httpx_async_sender`.
    """
    import asyncio

    send = urllib_sender(timeout=timeout)

    async def asend(request: RequestView) -> ResponseView:
        return await asyncio.to_thread(send, request)

    return asend
